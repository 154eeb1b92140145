import os

import numpy as np
import pytest
from PIL import Image

from common.config import get_default_config
from common.data.datasets import (DataError, ImageDataset, check_files_exist, load_rgb, read_class_names,
                                  read_list_file, scan_class_folders)
from common.data.samplers import EvalBatchSampler, TrainBatchSampler
from common.data.transforms import build_eval_transform, build_train_transform


def make_image(path, size=(40, 30), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = (np.random.RandomState(0).rand(size[1], size[0], 3) * 255).astype("uint8")
    img = Image.fromarray(arr)
    img.convert(mode).save(path)


@pytest.fixture
def tree(tmp_path):
    for i in range(3):
        make_image(str(tmp_path / "imgs" / f"{i}.jpg"))
    make_image(str(tmp_path / "imgs" / "gray.png"), mode="L")
    return tmp_path


def test_list_file_parsing_with_extra_columns(tree):
    (tree / "train_list.txt").write_text("# comment\nimgs/0.jpg 0 12.5 -3 2020-01-02\n\nimgs/1.jpg 2\n")
    samples = read_list_file(str(tree / "train_list.txt"), str(tree), num_classes=3)
    assert [s.label for s in samples] == [0, 2]
    assert samples[0].extra == ("12.5", "-3", "2020-01-02")
    assert samples[0].path == os.path.join(str(tree), "imgs/0.jpg")
    assert samples[1].origin.endswith("train_list.txt:4")


def test_label_out_of_range_names_file_and_line(tree):
    (tree / "l.txt").write_text("imgs/0.jpg 0\nimgs/1.jpg 5\n")
    with pytest.raises(DataError, match=r"l.txt:2: label 5 is out of range \[0, 3\)"):
        read_list_file(str(tree / "l.txt"), str(tree), num_classes=3)
    (tree / "neg.txt").write_text("imgs/0.jpg -1\n")
    with pytest.raises(DataError, match="out of range"):
        read_list_file(str(tree / "neg.txt"), str(tree), num_classes=3)


def test_malformed_lines(tree):
    (tree / "l.txt").write_text("imgs/0.jpg\n")
    with pytest.raises(DataError, match="l.txt:1: expected"):
        read_list_file(str(tree / "l.txt"), str(tree))
    (tree / "m.txt").write_text("imgs/0.jpg cat\n")
    with pytest.raises(DataError, match="label 'cat' is not an integer"):
        read_list_file(str(tree / "m.txt"), str(tree))
    with pytest.raises(DataError, match="list file not found"):
        read_list_file(str(tree / "absent.txt"), str(tree))


def test_missing_image_is_reported_with_its_list_line(tree):
    (tree / "l.txt").write_text("imgs/0.jpg 0\nimgs/nope.jpg 1\n")
    samples = read_list_file(str(tree / "l.txt"), str(tree), num_classes=3)
    with pytest.raises(DataError, match=r"(?s)1 image\(s\).*l.txt:2: .*nope.jpg"):
        check_files_exist(samples, "train")
    ds = ImageDataset(samples, lambda im: np.asarray(im))
    with pytest.raises(DataError, match="image not found: .*nope.jpg"):
        ds[1]


def test_corrupt_image_gives_clear_error_or_is_skipped(tree):
    (tree / "imgs" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (tree / "l.txt").write_text("imgs/bad.jpg 0\nimgs/1.jpg 1\n")
    samples = read_list_file(str(tree / "l.txt"), str(tree), num_classes=3)
    with pytest.raises(DataError, match="cannot decode image .*bad.jpg"):
        ImageDataset(samples, lambda im: np.asarray(im))[0]
    skipping = ImageDataset(samples, lambda im: np.asarray(im), train=True, skip_bad_images=True)
    image, label = skipping[0]
    assert label == 1 and image.shape == (30, 40, 3)
    # in evaluation the stand-in is marked (label -1) so that it is never scored twice
    assert ImageDataset(samples, lambda im: np.asarray(im), skip_bad_images=True)[0][1] == -1


def test_images_are_decoded_as_rgb(tree):
    assert load_rgb(str(tree / "imgs" / "gray.png")).mode == "RGB"


def test_class_folders_and_class_names(tmp_path):
    for cls in ("b_cls", "a_cls"):
        for i in range(2):
            make_image(str(tmp_path / "train" / cls / f"{i}.png"))
    (tmp_path / "train" / "a_cls" / "notes.txt").write_text("not an image")
    samples, classes = scan_class_folders(str(tmp_path / "train"))
    assert classes == ["a_cls", "b_cls"]
    assert [s.label for s in samples] == [0, 0, 1, 1]
    (tmp_path / "classes.txt").write_text("0 first class\n1 second\n")
    assert read_class_names(str(tmp_path / "classes.txt"), 2) == ["first class", "second"]
    with pytest.raises(DataError, match="2 class names"):
        read_class_names(str(tmp_path / "classes.txt"), 3)


def test_eval_transform_resizes_by_crop_pct_and_center_crops():
    cfg = get_default_config()
    cfg.DATA.IMAGE_SIZE = 32
    cfg.DATA.CROP_PCT = 0.5   # resize short side to 64, crop the central 32x32
    img = Image.new("RGB", (128, 64), (0, 0, 0))
    img.paste((255, 255, 255), (48, 16, 80, 48))  # white square exactly in the crop window after resize
    out = build_eval_transform(cfg)(img)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    white = (1.0 - np.array(cfg.DATA.MEAN)) / np.array(cfg.DATA.STD)
    assert np.allclose(out[:, 8:24, 8:24].mean(axis=(1, 2)), white, atol=0.05)


def test_train_transform_is_reproducible_per_sample_seed(tree):
    cfg = get_default_config()
    cfg.DATA.IMAGE_SIZE = 24
    cfg.AUG.RAND_AUGMENT = ""
    cfg.AUG.RE_PROB = 0.0
    (tree / "l.txt").write_text("imgs/0.jpg 0\nimgs/1.jpg 1\n")
    samples = read_list_file(str(tree / "l.txt"), str(tree))
    ds = ImageDataset(samples, build_train_transform(cfg), train=True, seed=3)
    a, b = ds[0][0], ds[0][0]
    assert a.shape == (3, 24, 24)
    np.testing.assert_array_equal(a, b)          # same (seed, epoch, index) -> same augmentation
    ds.set_epoch(1)
    assert not np.array_equal(a, ds[0][0])       # another epoch -> another augmentation


def test_train_sampler_drops_last_and_shards_disjointly():
    batches = [list(TrainBatchSampler(10, 3, rank=r, world_size=2, seed=0)) for r in range(2)]
    for b in batches:
        assert len(b) == 1 and all(len(x) == 3 for x in b)   # 5 per rank -> one full batch of 3
    s = TrainBatchSampler(10, 3, seed=0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainBatchSampler(3, 4)


def test_eval_sampler_covers_every_sample_exactly_once():
    seen = []
    for r in range(3):
        for batch in EvalBatchSampler(11, 2, rank=r, world_size=3):
            seen += batch
    assert sorted(seen) == list(range(11))
