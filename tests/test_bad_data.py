"""Bad input data: images convert with their real range, decompression bombs and unreadable list files / class
folders give one clear error naming the file (and line), and DATA.SKIP_BAD_IMAGES never counts a sample twice.

Unit tests call the data layer directly; the `*_cli` tests go through the real command line and check the error
boundary: exit code 2, an `error:` line that names the file, no traceback."""
import logging
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

from common.data.datasets import (DataError, ImageDataset, check_files_exist, load_rgb, read_class_names,
                                  read_list_file, scan_class_folders)
from common.data.build import build_datasets
from resmlp.method import ResMLPMethod
from tests.helpers import REPO, TINY_RESMLP, read_json, resmlp_main, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")
CLASSES = [f"c{i}" for i in range(8)]   # TINY_RESMLP has MODEL.NUM_CLASSES 8


# ------------------------------------------------------------------------------------------------------ helpers
def save_image(path, value=0, size=(40, 30), mode="RGB"):
    """A flat image of grey `value` (a distinct value per class lets a test see which image it got)."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.new("RGB", size, (value, value, value)).convert(mode).save(str(path))
    return str(path)


def write_bomb_png(path, width=20000, height=20000):
    """A valid 1-bit PNG of width x height black pixels: a few KB on disk, `width * height` pixels once decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)    # filter byte 0, then the packed bits of one row
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)   # bit depth 1, greyscale
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


def list_tree(root, per_class=2):
    """root/imgs/<class>_<i>.png with a train_list.txt and val_list.txt over 8 classes; grey value 20 * label."""
    rows = []
    for label in range(len(CLASSES)):
        for i in range(per_class):
            rel = f"imgs/{label}_{i}.png"
            save_image(os.path.join(root, rel), 20 * label)
            rows.append(f"{rel} {label}")
    for name in ("train_list.txt", "val_list.txt"):
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(rows) + "\n")
    return rows


def folder_tree(root, split, classes, per_class=2):
    for label, name in enumerate(classes):
        for i in range(per_class):
            save_image(os.path.join(root, split, name, f"{i}.png"), 20 * label)


def folder_config(root, **opts):
    method = ResMLPMethod()
    c = method.get_config()
    c.defrost()
    c.DATA.DATASET = "folder"
    c.DATA.DATA_PATH = str(root)
    c.DATA.IMAGE_SIZE = 32
    c.DATA.CLASS_NAMES = ""
    c.MODEL.NUM_CLASSES = opts.pop("num_classes", 3)
    c.AUG.RAND_AUGMENT = ""
    c.AUG.RE_PROB = 0.0
    return method, c


def cli(data, out, *opts, dataset=None, epochs=1, extra=()):
    args = ["-cfg", DEMO_CFG, "-data_path", str(data), "-output", str(out), "-batch_size", "8",
            *(["-dataset", dataset] if dataset else []), *extra,
            "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", str(epochs), "TRAIN.WARMUP_EPOCHS", "0",
            "DATA.CLASS_NAMES", "''", *opts]
    try:
        return run_cli(resmlp_main(*args), check=False, timeout=240)
    except subprocess.TimeoutExpired as e:   # a bad sample must end the run in seconds, not hang it
        pytest.fail(f"the run hung (killed after {e.timeout} s)\nstderr:\n{(e.stderr or b'')[-3000:]}")


def assert_input_error(proc, *names):
    """The boundary's contract for bad input: exit 2, an `error:` line naming the file(s), no traceback."""
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, detail
    for name in names:
        assert name in lines[0], detail
    return lines[0]


# ----------------------------------------------------------------------------- 1. images keep their real range
def test_16_bit_png_keeps_its_range(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)   # black, mid-grey (0x8080), white
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")                      # the case `convert('RGB')` turns all white
    rgb = load_rgb(str(tmp_path / "g16.png"))
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb)[0, :, 0], [0, 128, 255])
    assert (np.asarray(rgb) == np.asarray(rgb)[..., :1]).all()   # grey stays grey


def test_32_bit_integer_images(tmp_path):
    # values within 16 bits: read as 16-bit
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32)).save(tmp_path / "i16.tif")
    # values beyond 16 bits (or negative): stretched min-max
    Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32)).save(tmp_path / "iwide.tif")
    for name in ("i16.tif", "iwide.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_rgb(str(tmp_path / "i16.tif")))[0, :, 1], [0, 128, 255])
    np.testing.assert_array_equal(np.asarray(load_rgb(str(tmp_path / "iwide.tif")))[0, :, 1], [0, 128, 255])


def test_float_images(tmp_path):
    Image.fromarray(np.full((6, 5), 0.5, np.float32)).save(tmp_path / "half.tif")
    with Image.open(tmp_path / "half.tif") as im:
        assert im.mode == "F"                                  # the case `convert('RGB')` turns all black
    assert (np.asarray(load_rgb(str(tmp_path / "half.tif"))) == 128).all()
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32)).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(np.asarray(load_rgb(str(tmp_path / "unit.tif")))[0, :, 2], [0, 64, 255])
    Image.fromarray(np.array([[100.0, 600.0, 1100.0]], np.float32)).save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(np.asarray(load_rgb(str(tmp_path / "wide.tif")))[0, :, 0], [0, 128, 255])
    Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="cannot decode image .*nan.tif.*NaN"):
        load_rgb(str(tmp_path / "nan.tif"))


@pytest.mark.parametrize("mode,ext", [("1", "png"), ("L", "png"), ("P", "png"), ("LA", "png"), ("RGBA", "png"),
                                      ("CMYK", "jpg"), ("CMYK", "tif"), ("YCbCr", "tif"), ("RGB", "bmp"),
                                      ("L", "webp"), ("RGB", "ppm")])
def test_other_modes_convert_as_pil_does(tmp_path, mode, ext):
    src = Image.new("RGB", (8, 6), (200, 200, 200)).convert(mode)
    if mode == "P":
        src.info["transparency"] = 0
    src.save(tmp_path / f"x.{ext}")
    rgb = load_rgb(str(tmp_path / f"x.{ext}"))
    assert rgb.mode == "RGB" and rgb.size == (8, 6)
    with Image.open(tmp_path / f"x.{ext}") as im:
        np.testing.assert_array_equal(np.asarray(rgb), np.asarray(im.convert("RGB")))


# -------------------------------------------------------------------------------------- 2. decompression bombs
def test_decompression_bomb_is_a_bad_image(tmp_path):
    bomb = write_bomb_png(tmp_path / "bomb.png")
    assert os.path.getsize(bomb) < 200_000
    with pytest.raises(DataError, match=r"bomb.png \(listed at l.txt:2\) is too large to decode safely"):
        load_rgb(bomb, "l.txt:2")


def test_decompression_bomb_warning_is_an_error_too(tmp_path, monkeypatch):
    path = save_image(tmp_path / "a.png", 10, size=(40, 30))      # 1200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)           # 1000 < 1200 < 2000: PIL only warns
    with pytest.raises(DataError, match="a.png is too large to decode safely"):
        load_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)
    assert load_rgb(path).size == (40, 30)


def test_decompression_bomb_is_skipped_under_skip_bad_images(tmp_path, caplog):
    list_tree(tmp_path, per_class=1)
    write_bomb_png(tmp_path / "imgs" / "0_0.png")
    samples = read_list_file(str(tmp_path / "train_list.txt"), str(tmp_path), 8)
    with pytest.raises(DataError, match="0_0.png .*too large"):
        ImageDataset(samples, np.asarray, train=True)[0]
    with caplog.at_level(logging.WARNING):
        image, label = ImageDataset(samples, np.asarray, train=True, skip_bad_images=True)[0]
    assert label == 1 and image[0, 0, 0] == 20                     # the next sample, with its own label
    assert "0_0.png" in caplog.text


@pytest.mark.parametrize("workers", ["0", "2"])
def test_decompression_bomb_cli(tmp_path, workers):
    data = tmp_path / "data"
    list_tree(str(data))
    write_bomb_png(data / "imgs" / "3_1.png")
    proc = cli(data, tmp_path / "out", "DATA.NUM_WORKERS", workers)
    line = assert_input_error(proc, "3_1.png", "train_list.txt:8")
    assert "too large" in line


# ------------------------------------------------------------ 3. SKIP_BAD_IMAGES in evaluation: never counted twice
def test_skipped_eval_sample_is_not_scored(tmp_path, caplog):
    list_tree(tmp_path, per_class=1)
    (tmp_path / "imgs" / "2_0.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    samples = read_list_file(str(tmp_path / "val_list.txt"), str(tmp_path), 8)
    with caplog.at_level(logging.WARNING):
        image, label = ImageDataset(samples, np.asarray, train=False, skip_bad_images=True)[2]
    assert label == -1                                  # evaluation: the replacement is not scored
    assert image[0, 0, 0] == 60                         # ... though the batch still gets a real image (3_0.png)
    assert "2_0.png" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        image, label = ImageDataset(samples, np.asarray, train=True, skip_bad_images=True)[2]
    assert label == 3 and image[0, 0, 0] == 60          # training: the replacement with its own label
    assert "2_0.png" in caplog.text


def test_skip_bad_images_gives_up_after_a_run_of_bad_ones(tmp_path):
    list_tree(tmp_path, per_class=2)
    for label in range(8):
        for i in range(2):
            (tmp_path / "imgs" / f"{label}_{i}.png").write_bytes(b"junk")
    samples = read_list_file(str(tmp_path / "val_list.txt"), str(tmp_path), 8)
    with pytest.raises(DataError, match="0_0.png.*no readable image among the next 10 samples"):
        ImageDataset(samples, np.asarray, skip_bad_images=True)[0]


def test_skipped_eval_sample_cli(tmp_path):
    """Evaluation with a bad image and DATA.SKIP_BAD_IMAGES: the run succeeds, the bad image is named, and the
    metrics count only the 15 readable images (the replacement is not counted a second time)."""
    data = tmp_path / "data"
    list_tree(str(data))
    (data / "imgs" / "5_0.png").write_bytes(b"junk")
    proc = cli(data, tmp_path / "out", "DATA.SKIP_BAD_IMAGES", "True", extra=("-eval",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5_0.png" in proc.stdout + proc.stderr
    metrics = read_json(os.path.join(tmp_path / "out", "eval_metrics.json"))
    assert metrics["count"] == 15, metrics
    proc = cli(data, tmp_path / "out2", extra=("-eval",))     # without the option: one error naming the image
    assert_input_error(proc, "5_0.png", "val_list.txt:11")


# ------------------------------------------------------------------------------------------------- 4. list files
def test_non_utf8_list_file_names_the_line(tmp_path):
    list_tree(tmp_path, per_class=1)
    (tmp_path / "l.txt").write_bytes(b"imgs/0_0.png 0\nimgs/1_0.png 1\nimgs/caf\xe9.png 2\n")
    with pytest.raises(DataError, match=r"l.txt:3: not UTF-8 text: byte 0xe9 at column 9"):
        read_list_file(str(tmp_path / "l.txt"), str(tmp_path), 8)
    (tmp_path / "u16.txt").write_bytes("imgs/0_0.png 0\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"u16.txt:1: .*UTF-16"):
        read_list_file(str(tmp_path / "u16.txt"), str(tmp_path), 8)
    (tmp_path / "classes.txt").write_bytes(b"a\nb\xff\n")
    with pytest.raises(DataError, match=r"classes.txt:2: not UTF-8"):
        read_class_names(str(tmp_path / "classes.txt"))


def test_utf8_bom_is_stripped(tmp_path):
    list_tree(tmp_path, per_class=1)
    (tmp_path / "l.txt").write_bytes(b"\xef\xbb\xbfimgs/0_0.png 0\r\nimgs/1_0.png 1\r\n")
    samples = read_list_file(str(tmp_path / "l.txt"), str(tmp_path), 8)
    assert samples[0].path == os.path.join(str(tmp_path), "imgs/0_0.png")
    check_files_exist(samples, "l.txt")
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbf0 first\n1 second\n")
    assert read_class_names(str(tmp_path / "classes.txt"), 2) == ["first", "second"]


def test_path_with_whitespace_points_to_prepare_link(tmp_path):
    save_image(tmp_path / "imgs" / "my cat.png")
    save_image(tmp_path / "imgs" / "photo 2 b.png")
    (tmp_path / "l.txt").write_text("imgs/my cat.png 1\n")
    with pytest.raises(DataError, match=r"l.txt:1: the image path 'imgs/my cat.png' contains whitespace.*"
                                        r"python -m common.prepare DATASET --src SRC --dst DST --link"):
        read_list_file(str(tmp_path / "l.txt"), str(tmp_path), 8)
    # a path whose second word is a number reads as a label: the missing-file check names the real file
    (tmp_path / "m.txt").write_text("imgs/photo 2 b.png 1\n")
    samples = read_list_file(str(tmp_path / "m.txt"), str(tmp_path), 8)
    with pytest.raises(DataError, match=r"m.txt:1: .*imgs/photo .*'.*imgs/photo 2 b.png' exists.*--link"):
        check_files_exist(samples, "m.txt")


def test_absolute_and_outside_paths_are_allowed(tmp_path):
    outside = save_image(tmp_path / "store" / "a.png", 40)
    root = tmp_path / "data"
    root.mkdir()
    (root / "l.txt").write_text(f"{outside} 1\n../store/a.png 2\n")
    samples = read_list_file(str(root / "l.txt"), str(root), 8)
    check_files_exist(samples, "l.txt")
    ds = ImageDataset(samples, np.asarray)
    for i, label in enumerate((1, 2)):
        image, got = ds[i]
        assert got == label and image[0, 0, 0] == 40


def test_non_utf8_list_file_cli(tmp_path):
    data = tmp_path / "data"
    list_tree(str(data))
    with open(data / "train_list.txt", "ab") as f:
        f.write(b"imgs/\xff.png 0\n")
    line = assert_input_error(cli(data, tmp_path / "out"), "train_list.txt:17")
    assert "UTF-8" in line


def test_path_with_whitespace_cli(tmp_path):
    data = tmp_path / "data"
    list_tree(str(data))
    save_image(data / "imgs" / "a b.png")
    with open(data / "train_list.txt", "a") as f:
        f.write("imgs/a b.png 0\n")
    line = assert_input_error(cli(data, tmp_path / "out"), "train_list.txt:17", "imgs/a b.png")
    assert "--link" in line


# --------------------------------------------------------------------------------------- 5. class-folder data sets
def test_val_labels_follow_train_class_names(tmp_path):
    folder_tree(tmp_path, "train", ["ant", "bee", "cat"])
    folder_tree(tmp_path, "val", ["ant", "bee", "cat"])
    method, cfg = folder_config(tmp_path)
    train, val = build_datasets(cfg, method)
    assert [s.label for s in val.samples] == [s.label for s in train.samples] == [0, 0, 1, 1, 2, 2]
    # a renamed val folder would shift labels by sorted order ('aardvark' sorts first): it is an error instead
    os.rename(tmp_path / "val" / "cat", tmp_path / "val" / "aardvark")
    with pytest.raises(DataError, match=r"(?s)val: the class folders do not match the training split .*train.*"
                                        r"'aardvark' are not classes.*'cat' .* have no folder"):
        build_datasets(cfg, method)
    with pytest.raises(DataError, match="'aardvark' are not classes"):
        build_datasets(cfg, method, train=False)      # evaluation only: still checked against train/


def test_val_missing_or_extra_class_is_named(tmp_path):
    folder_tree(tmp_path, "train", ["ant", "bee", "cat"])
    folder_tree(tmp_path, "val", ["ant", "cat"])
    method, cfg = folder_config(tmp_path)
    with pytest.raises(DataError, match=r"val: .*class\(es\) 'bee' of the training split .*have no folder here"):
        build_datasets(cfg, method)
    folder_tree(tmp_path, "val", ["bee", "dog"])
    with pytest.raises(DataError, match=r"val: .*class folder\(s\) 'dog' are not classes of the training split"):
        build_datasets(cfg, method)


def test_empty_class_folder_is_an_error(tmp_path):
    folder_tree(tmp_path, "train", ["ant", "bee", "cat"])
    folder_tree(tmp_path, "val", ["ant", "bee"])
    (tmp_path / "val" / "cat" / "sub").mkdir(parents=True)
    (tmp_path / "val" / "cat" / "notes.txt").write_text("no images here")
    method, cfg = folder_config(tmp_path)
    with pytest.raises(DataError, match=r"class folder .*val/cat has no images"):
        build_datasets(cfg, method)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/dog has no images"):
        build_datasets(cfg, method)


def test_hidden_folders_and_files_are_ignored(tmp_path):
    folder_tree(tmp_path, "train", ["ant", "bee", "cat"])
    folder_tree(tmp_path, "val", ["ant", "bee", "cat"])
    save_image(tmp_path / "train" / ".ipynb_checkpoints" / "x.png")          # a hidden "class"
    save_image(tmp_path / "val" / "bee" / ".thumbs" / "x.png")                # a hidden sub-folder
    (tmp_path / "val" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    method, cfg = folder_config(tmp_path)
    train, val = build_datasets(cfg, method)
    assert train.samples and len(train) == len(val) == 6
    assert not [s for s in train.samples + val.samples if "/." in s.path]
    for i in range(len(val)):
        val[i]


def test_class_names_file_and_num_classes_still_rule(tmp_path):
    folder_tree(tmp_path, "train", ["ant", "bee", "cat"])
    folder_tree(tmp_path, "val", ["ant", "bee", "cat"])
    (tmp_path / "classes.txt").write_text("cat\nbee\nant\n")
    method, cfg = folder_config(tmp_path)
    cfg.DATA.CLASS_NAMES = "classes.txt"
    train, val = build_datasets(cfg, method)
    assert [s.label for s in val.samples] == [0, 0, 1, 1, 2, 2]
    assert os.path.basename(os.path.dirname(val.samples[0].path)) == "cat"
    (tmp_path / "classes.txt").write_text("cat\nbee\nemu\n")
    with pytest.raises(DataError, match=r"train: .*'ant' are not classes of .*classes.txt.*'emu'"):
        build_datasets(cfg, method)
    method, cfg = folder_config(tmp_path, num_classes=4)
    with pytest.raises(DataError, match=r"train: 3 classes but MODEL.NUM_CLASSES is 4"):
        build_datasets(cfg, method)


def test_scan_class_folders_alone(tmp_path):
    folder_tree(tmp_path, "train", ["b", "a"])
    samples, classes = scan_class_folders(str(tmp_path / "train"))
    assert classes == ["a", "b"] and [s.label for s in samples] == [0, 0, 1, 1]
    samples, classes = scan_class_folders(str(tmp_path / "train"), ["b", "a"])
    assert [os.path.basename(os.path.dirname(s.path)) for s in samples] == ["b", "b", "a", "a"]
    with pytest.raises(DataError, match="image folder not found"):
        scan_class_folders(str(tmp_path / "nope"))


def test_renamed_val_folder_cli(tmp_path):
    data = tmp_path / "data"
    folder_tree(str(data), "train", CLASSES, per_class=1)
    folder_tree(str(data), "val", CLASSES[:7] + ["x7"], per_class=1)
    line = assert_input_error(cli(data, tmp_path / "out", dataset="folder"), os.path.join(str(data), "val"))
    assert "'x7'" in line and "'c7'" in line


def test_folder_data_with_hidden_entries_trains_cli(tmp_path):
    data = tmp_path / "data"
    folder_tree(str(data), "train", CLASSES, per_class=1)
    folder_tree(str(data), "val", CLASSES, per_class=1)
    save_image(data / "train" / ".ipynb_checkpoints" / "x.png")
    (data / "val" / "c3" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    proc = cli(data, tmp_path / "out", dataset="folder")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(os.path.join(tmp_path / "out", "metrics.json"))["history"][-1]["val_count"] == 8
