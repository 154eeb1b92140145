"""The iNat21 json layout (DATA.DATASET inat21_json): join on image_id whatever the order, metadata carried to the
model input, and clear errors for malformed files, missing images and bad dates."""
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

from common.data.datasets import DataError
from common.data.build import build_datasets
from dynamic_mlp.inat import read_inat_json
from dynamic_mlp.metadata import encode, parse_date
from dynamic_mlp.method import DynamicMLPMethod

ROWS = [  # (label, lat, lon, date) of each image; the label is also in its file name
    (3, 40.5, -100.25, "2019-06-01 10:20:00+00:00"), (0, None, None, None), (7, -33.5, 151.0, "2020-02-29"),
    (3, 12.0, float("nan"), "2018-01-01"), (1, 60.0, 100.0, "2017-12-31 23:59:00+00:00"), (5, 5.5, 20.5, "2021-09-09")]


def write_inat(root, name, rows, shuffle_seed=0, folder="train_mini"):
    """Images on disk plus an iNat21-style json whose images and annotations are in different random orders."""
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    images, annotations = [], []
    for i, (label, lat, lon, date) in enumerate(rows):
        file_name = f"{folder}/{i:03d}_class{label}.jpg"
        Image.new("RGB", (40, 40), (30 * label, 100, 50)).save(os.path.join(root, file_name))
        images.append({"id": 1000 + i, "file_name": file_name, "latitude": lat, "longitude": lon, "date": date,
                       "width": 40, "height": 40, "location_uncertainty": 10})
        annotations.append({"id": 5000 + i, "image_id": 1000 + i, "category_id": label})
    rng = random.Random(shuffle_seed)
    rng.shuffle(images)
    rng.shuffle(annotations)
    text = json.dumps({"info": {}, "images": images, "annotations": annotations,
                       "categories": [{"id": c} for c in range(8)]})
    with open(os.path.join(root, name), "w") as f:
        f.write(text)  # a NaN longitude is written as NaN, which json.load accepts
    return images, annotations


def dm_config(root, **opts):
    method = DynamicMLPMethod()
    c = method.get_config()
    c.defrost()
    c.DATA.DATASET = "inat21_json"
    c.DATA.DATA_PATH = str(root)
    c.DATA.TRAIN_JSON = "train_mini.json"
    c.DATA.VAL_JSON = "val.json"
    c.DATA.IMAGE_SIZE = 32
    c.MODEL.NUM_CLASSES = 8
    c.MODEL.NAME = "resnet18_dynamic_mlp_c"
    c.AUG.RAND_AUGMENT = ""
    c.AUG.RE_PROB = 0.0
    for k, v in opts.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    c.freeze()
    return method, c


def test_join_on_image_id_with_shuffled_order(tmp_path):
    images, annotations = write_inat(tmp_path, "train_mini.json", ROWS, shuffle_seed=3)
    assert [a["image_id"] for a in annotations] != [im["id"] for im in images]  # a positional zip would be wrong
    samples = read_inat_json(str(tmp_path / "train_mini.json"), str(tmp_path), num_classes=8)
    assert len(samples) == len(ROWS)
    for s in samples:
        i = int(os.path.basename(s.path)[:3])
        assert s.label == ROWS[i][0] == int(s.path.split("class")[1][0])
        lat, lon, date = ROWS[i][1:]
        missing = lat is None or lon is None or date is None or lon != lon
        assert (s.extra[0] == "nan") == (lat is None)
        assert (s.extra[2] == "nan") == (date is None)
        if not missing:
            assert float(s.extra[0]) == lat and float(s.extra[1]) == lon
            assert s.extra[2] == parse_date(date).isoformat()
        assert s.origin.endswith(f"image {1000 + i} ({os.path.relpath(s.path, tmp_path)})")


def test_engine_builds_json_datasets_with_metadata(tmp_path):
    write_inat(tmp_path, "train_mini.json", ROWS, shuffle_seed=1)
    write_inat(tmp_path, "val.json", ROWS[:3], shuffle_seed=2, folder="val")
    method, cfg = dm_config(tmp_path)
    train, val = build_datasets(cfg, method)
    assert len(train) == 6 and len(val) == 3
    by_index = {int(os.path.basename(s.path)[:3]): k for k, s in enumerate(train.samples)}
    image, label, meta = train[by_index[2]]
    assert image.shape == (3, 32, 32) and label == 7
    np.testing.assert_allclose(meta, encode(-33.5, 151.0, parse_date("2020-02-29")))
    for i in (1, 3):  # all missing; NaN longitude
        assert not train[by_index[i]][2].any()
    # image-only models read the same files, without the metadata
    method, cfg = dm_config(tmp_path, **{"MODEL.NAME": "resnet18_image_only"})
    train, _ = build_datasets(cfg, method)
    assert len(train[0]) == 2


def test_missing_image_is_named(tmp_path):
    write_inat(tmp_path, "train_mini.json", ROWS)
    write_inat(tmp_path, "val.json", ROWS[:2], folder="val")
    os.remove(tmp_path / "train_mini" / "004_class1.jpg")
    method, cfg = dm_config(tmp_path)
    with pytest.raises(DataError, match=r"(?s)1 image\(s\) listed for the train split .*image 1004 "
                                        r"\(train_mini/004_class1.jpg\)"):
        build_datasets(cfg, method)


def _rewrite(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][2].update(date="29/02/2020"), r"image 10\d\d \(train_mini/.*\): date '29/02/2020' does "
                                                         r"not parse \(expected YYYY-MM-DD\)"),
    (lambda d: d["images"][0].update(date="2019-02-30"), r"date '2019-02-30' is not a valid date"),
    (lambda d: d["images"][1].update(latitude="north"), r"latitude 'north' is not a number"),
    (lambda d: d.pop("annotations"), r"'annotations' is missing or not a list"),
    (lambda d: d["annotations"].pop(0), r"no annotation has image_id 10\d\d"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), r"image 10\d\d has more than one annotation"),
    (lambda d: d["annotations"].append({"image_id": 77, "category_id": 1}), r"refer to images that are not in"),
    (lambda d: d["annotations"][0].update(category_id=8), r"category_id 8 is out of range \[0, 8\)"),
    (lambda d: d["annotations"][0].update(category_id="3"), r"category_id '3' is not an integer"),
    (lambda d: d["images"][0].pop("file_name"), r"images\[0\] has no 'file_name'"),
])
def test_bad_files_give_clear_errors(tmp_path, edit, message):
    write_inat(tmp_path, "train_mini.json", ROWS)
    path = str(tmp_path / "train_mini.json")
    _rewrite(path, edit)
    with pytest.raises(DataError, match=message) as e:
        read_inat_json(path, str(tmp_path), num_classes=8)
    assert path in str(e.value)


def test_malformed_json(tmp_path):
    path = tmp_path / "val.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}],\n "annotations": [{"image_id": 1,, }]}')
    with pytest.raises(DataError, match=r"val.json: not valid JSON \(.* at line 2, column \d+\)"):
        read_inat_json(str(path), str(tmp_path))
    path.write_text("[1, 2, 3]")
    with pytest.raises(DataError, match="expected a JSON object with 'images' and 'annotations'"):
        read_inat_json(str(path), str(tmp_path))
    with pytest.raises(DataError, match="annotation file not found"):
        read_inat_json(str(tmp_path / "train.json"), str(tmp_path))
