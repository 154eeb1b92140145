"""Data preparation (`python -m common.prepare`): a miniature copy of every data set in its official layout is
prepared, then read back by the engine's own list reader and dataset class.

Every image is a tiny solid-colour JPEG whose colour is unique, so loading it through the prepared list proves the
list points at the right file, not only that the label column looks right.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.data.datasets import ImageDataset, read_class_names, read_list_file
from common.prepare import DATASETS, main
from tests.helpers import REPO, env

# --------------------------------------------------------------------------------------------------- helpers
_count = [0]


def jpeg(path):
    """Write a tiny JPEG with a colour no other test image has; return the colour."""
    _count[0] += 1
    k = _count[0]
    color = ((k * 67) % 200 + 20, (k * 131 + 60) % 200 + 20, (k * 29 + 120) % 200 + 20)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, quality=98)
    return color


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def prepare_ok(argv, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 0, f"prepare failed:\n{out}\n{err}"
    return out, err


def prepare_fails(argv, capsys, *needles):
    rc, out, err = run(argv, capsys)
    assert rc != 0, f"prepare should have failed:\n{out}\n{err}"
    for needle in needles:
        assert needle in err, f"'{needle}' not in the error:\n{err}"
    return err


def load_split(dst, list_name, num_classes, expected):
    """Read a prepared list with the engine; every image must load with the colour and label it was made with.
    expected: {image basename: (label, colour, extra columns or None)}."""
    samples = read_list_file(os.path.join(dst, list_name), dst, num_classes)
    ds = ImageDataset(samples, transform=lambda im: np.asarray(im))
    names = [os.path.basename(s.path) for s in samples]
    assert sorted(names) == sorted(expected), list_name
    for i, s in enumerate(samples):
        img, label = ds[i]
        want_label, color, extra = expected[names[i]]
        assert int(label) == want_label, (list_name, names[i])
        assert np.abs(img.reshape(-1, 3).mean(0) - color).max() < 12, (list_name, names[i])
        if extra is not None:
            assert list(s.extra) == extra, (list_name, names[i])
        else:
            assert s.extra == ()
    return samples


def classes_of(dst, num_classes=None):
    return read_class_names(os.path.join(dst, "classes.txt"), num_classes)


def snapshot(root):
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
    return out


def read_bytes(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, f))}


# ------------------------------------------------------------------------------------------------------- CUB
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub(src):
    root = os.path.join(src, "CUB_200_2011")
    images, labels, split = [], [], []
    train, val = {}, {}
    img_id = 0
    for c, folder in enumerate(CUB_CLASSES, 1):
        for k in range(3):
            img_id += 1
            name = f"{folder.split('.')[1]}_{img_id:04d}_{k}.jpg"
            color = jpeg(os.path.join(root, "images", folder, name))
            images.append(f"{img_id} {folder}/{name}")
            labels.append(f"{img_id} {c}")
            split.append(f"{img_id} {1 if k < 2 else 0}")
            (train if k < 2 else val)[name] = (c - 1, color, None)
    write(os.path.join(root, "images.txt"), images)
    write(os.path.join(root, "image_class_labels.txt"), labels[::-1])   # joined on the id, not the position
    write(os.path.join(root, "train_test_split.txt"), split[3:] + split[:3])
    write(os.path.join(root, "classes.txt"), [f"{i} {n}" for i, n in enumerate(CUB_CLASSES, 1)])
    return root, train, val


def test_cub(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "out" / "cub")
    root, train, val = make_cub(src)
    before = snapshot(src)
    out, err = prepare_ok(["cub", "--src", src, "--dst", dst], capsys)
    assert classes_of(dst, 3) == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    load_split(dst, "train_list.txt", 3, train)
    load_split(dst, "val_list.txt", 3, val)
    # paths are relative to --dst (src lies beside it here)
    first = open(os.path.join(dst, "train_list.txt")).readline().split()[0]
    assert first.startswith("../../src/CUB_200_2011/images/")
    # the official counts are compared, and the difference is only a warning
    assert "WARNING: cub train_list.txt: 6 images, the official split has 5994" in err
    assert "WARNING: cub val_list.txt: 3 images, the official split has 5794" in err
    assert "train_list.txt: 6 images (official 5994)" in out
    info = json.load(open(os.path.join(dst, "prepare_info.json")))
    assert info["num_classes"] == 3 and info["splits"] == {"train_list.txt": 6, "val_list.txt": 3}
    # idempotent, and the source tree is never touched
    first_run = read_bytes(dst)
    prepare_ok(["cub", "--src", root, "--dst", dst], capsys)   # the CUB_200_2011 folder itself works too
    assert read_bytes(dst) == first_run
    assert snapshot(src) == before
    assert not [f for f in os.listdir(dst) if ".tmp" in f]


def test_cub_missing_image_fails_unless_skipped(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, train, val = make_cub(src)
    gone = sorted(train)[0]
    os.remove(os.path.join(root, "images", "001.Black_footed_Albatross", gone))
    prepare_fails(["cub", "--src", src, "--dst", dst], capsys, "1 of 6 images listed for train_list.txt do not exist",
                  gone, "--skip-missing")
    assert not os.path.exists(os.path.join(dst, "train_list.txt"))
    _, err = prepare_ok(["cub", "--src", src, "--dst", dst, "--skip-missing"], capsys)
    assert "WARNING" in err and gone in err
    del train[gone]
    load_split(dst, "train_list.txt", 3, train)
    load_split(dst, "val_list.txt", 3, val)


def test_cub_missing_image_report_is_capped(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, _, _ = make_cub(src)
    lines = open(os.path.join(root, "images.txt")).read().splitlines()
    extra_ids = range(100, 125)
    ghosts = [f"{i} 001.Black_footed_Albatross/ghost_{i}.jpg" for i in extra_ids]
    write(os.path.join(root, "images.txt"), lines + ghosts)
    with open(os.path.join(root, "image_class_labels.txt"), "a") as f:
        f.write("".join(f"{i} 1\n" for i in extra_ids))
    with open(os.path.join(root, "train_test_split.txt"), "a") as f:
        f.write("".join(f"{i} 1\n" for i in extra_ids))
    err = prepare_fails(["cub", "--src", src, "--dst", dst], capsys, "25 of 31 images", "... and 5 more")
    assert err.count("ghost_") == 20


def test_cub_bad_class_id(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, _, _ = make_cub(src)
    path = os.path.join(root, "image_class_labels.txt")
    lines = open(path).read().splitlines()
    lines[1] = lines[1].split()[0] + " 7"
    write(path, lines)
    prepare_fails(["cub", "--src", src, "--dst", dst], capsys, f"{path}:2: class id 7 is not in")


def test_cub_non_contiguous_class_ids(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, _, _ = make_cub(src)
    with open(os.path.join(root, "classes.txt"), "a") as f:
        f.write("5 005.Crested_Auklet\n")
    prepare_fails(["cub", "--src", src, "--dst", dst], capsys, "class ids must be 1..4")


# --------------------------------------------------------------------------------------------------- NABirds
NABIRDS_CLASSES = [(0, "Birds"), (1, "Perching Birds"), (295, "Common Loon"), (313, "Red-throated Loon"),
                   (817, "Black-and-white Warbler"), (900, "Leaf without images")]


def make_nabirds(src):
    root = os.path.join(src, "nabirds")
    images, labels, split = [], [], []
    train, val = {}, {}
    new_id = {295: 0, 313: 1, 817: 2}
    n = 0
    for cid in (817, 295, 313):
        for k in range(3):
            n += 1
            uuid = f"{n:08x}-21dc-4d0c-bfe1-4cae3c85c829"
            name = uuid.replace("-", "") + ".jpg"
            color = jpeg(os.path.join(root, "images", f"{cid:04d}", name))
            images.append(f"{uuid} {cid:04d}/{name}")
            labels.append(f"{uuid} {cid}")
            split.append(f"{uuid} {int(k != 1)}")
            (train if k != 1 else val)[name] = (new_id[cid], color, None)
    write(os.path.join(root, "images.txt"), images)
    write(os.path.join(root, "image_class_labels.txt"), labels[::-1])
    write(os.path.join(root, "train_test_split.txt"), split)
    write(os.path.join(root, "classes.txt"), [f"{i} {n}" for i, n in NABIRDS_CLASSES])
    return root, train, val


def test_nabirds(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, train, val = make_nabirds(src)
    out, err = prepare_ok(["nabirds", "--src", src, "--dst", dst], capsys)
    assert classes_of(dst, 3) == ["Common Loon", "Red-throated Loon", "Black-and-white Warbler"]
    assert open(os.path.join(dst, "class_mapping.txt")).read().splitlines() == [
        "0 295 Common Loon", "1 313 Red-throated Loon", "2 817 Black-and-white Warbler"]
    load_split(dst, "train_list.txt", 3, train)
    load_split(dst, "val_list.txt", 3, val)
    assert "WARNING: nabirds: 3 classes, the official data set has 555" in err
    assert "23929" in out and "24633" in out


def test_nabirds_unknown_class(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, _, _ = make_nabirds(src)
    path = os.path.join(root, "image_class_labels.txt")
    with open(path, "a") as f:
        f.write(open(os.path.join(root, "images.txt")).readline().split()[0] + " 4242\n")
    prepare_fails(["nabirds", "--src", src, "--dst", dst], capsys, "class id 4242 is not in", "classes.txt")


# ---------------------------------------------------------------------------------------------------- iNat21
INAT_CATEGORIES = [(2, "Turdus migratorius"), (0, "Lumbricus terrestris"), (1, "Poa annua")]


def make_inat(src, train_json, image_dir):
    """Images listed in another order than their annotations, image ids unlike annotation ids, and every kind of
    missing metadata."""
    root = os.path.join(src, "inat21")
    cats = [{"id": i, "name": n, "common_name": n.split()[0], "supercategory": "Plants",
             "image_dir_name": f"{i:05d}_{n.replace(' ', '_')}"} for i, n in INAT_CATEGORIES]
    cat_dir = {c["id"]: c["image_dir_name"] for c in cats}
    nan = float("nan")
    # (category, latitude, longitude, date) -> expected columns
    train_meta = [
        (0, 43.0832, -89.4012, "2010-07-24 00:00:00+00:00", ["43.0832", "-89.4012", "2010-07-24"]),
        (1, 10.5, 20.25, None, ["10.5", "20.25", "nan"]),                      # missing date
        (2, nan, None, "2017-06-03", ["nan", "nan", "2017-06-03"]),           # missing location (NaN and null)
        (0, -33.9, 151.2, "2020-02-29 23:59:00+00:00", ["-33.9", "151.2", "2020-02-29"]),   # leap day kept
        (1, 95.0, 12.0, "2019-02-30", ["nan", "12.0", "nan"]),                # impossible latitude and date
        (2, "KEY-ABSENT", "KEY-ABSENT", "KEY-ABSENT", ["nan", "nan", "nan"]),
    ]
    val_meta = [(2, 60.1, 24.9, "2018-12-31 12:00:00-08:00", ["60.1", "24.9", "2018-12-31"]),
                (0, None, None, None, ["nan", "nan", "nan"]),
                (1, 1.0, 2.0, "2016-01-01", ["1.0", "2.0", "2016-01-01"])]
    expected = {}
    for name, split_dir, meta, base in ((train_json, image_dir, train_meta, 5000), ("val.json", "val", val_meta, 9000)):
        images, anns, exp = [], [], {}
        for k, (cid, lat, lon, date, cols) in enumerate(meta):
            img_id = base + 7 * k
            fname = f"{split_dir}/{cat_dir[cid]}/{img_id:06x}-a1b2.jpg"
            color = jpeg(os.path.join(root, fname))
            img = {"id": img_id, "width": 8, "height": 8, "file_name": fname, "license": 1, "rights_holder": "x",
                   "location_uncertainty": 10}
            for key, value in (("latitude", lat), ("longitude", lon), ("date", date)):
                if value != "KEY-ABSENT":
                    img[key] = value
            images.append(img)
            anns.append({"id": 100 + k, "image_id": img_id, "category_id": cid})
            exp[os.path.basename(fname)] = (cid, color, cols)
        images = images[1::2] + images[0::2]       # not in annotation order
        data = {"info": {"year": 2021}, "images": images, "annotations": anns[::-1], "categories": cats,
                "licenses": []}
        with open(os.path.join(root, name), "w") as f:
            json.dump(data, f)                     # NaN is written as the bare NaN the official files use
        expected[name] = exp
    return root, expected[train_json], expected["val.json"]


@pytest.mark.parametrize("dataset,train_json,image_dir", [("inat21_mini", "train_mini.json", "train_mini"),
                                                          ("inat21", "train.json", "train")])
def test_inat21(tmp_path, capsys, dataset, train_json, image_dir):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, train, val = make_inat(src, train_json, image_dir)
    out, err = prepare_ok([dataset, "--src", src, "--dst", dst], capsys)
    assert classes_of(dst, 3) == ["Lumbricus terrestris", "Poa annua", "Turdus migratorius"]
    load_split(dst, "train_list.txt", 3, train)
    load_split(dst, "val_list.txt", 3, val)
    official = {"inat21_mini": 500000, "inat21": 2686843}[dataset]
    assert f"the official split has {official}" in err and "the official split has 100000" in err
    assert "2 latitude/longitude/date value(s) could not be read" in err
    # the columns parse as Dynamic MLP reads them
    for line in open(os.path.join(dst, "train_list.txt")):
        lat, lon = (float(v) for v in line.split()[2:4])
        assert math.isnan(lat) or -90 <= lat <= 90
        assert math.isnan(lon) or -180 <= lon <= 180


def test_inat21_malformed_json(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, _, _ = make_inat(src, "train_mini.json", "train_mini")
    path = os.path.join(root, "val.json")
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    prepare_fails(["inat21_mini", "--src", src, "--dst", dst], capsys, f"{path}: not valid JSON")


def test_inat21_unknown_category_and_missing_annotation(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, _, _ = make_inat(src, "train_mini.json", "train_mini")
    path = os.path.join(root, "train_mini.json")
    data = json.load(open(path))
    data["annotations"][0]["category_id"] = 7
    json.dump(data, open(path, "w"))
    prepare_fails(["inat21_mini", "--src", src, "--dst", dst], capsys, path, "category_id 7")
    data["annotations"][0]["category_id"] = 1
    lost = data["annotations"].pop(0)["image_id"]
    json.dump(data, open(path, "w"))
    prepare_fails(["inat21_mini", "--src", src, "--dst", dst], capsys, f"image {lost}", "has no annotation")


# -------------------------------------------------------------------------------------------------- Aircraft
AIRCRAFT = {"variant": ["707-320", "A300B4", "F/A-18"], "family": ["Boeing 707", "A300", "F/A-18"],
            "manufacturer": ["Boeing", "Airbus", "McDonnell Douglas"]}
NAMES_FILE = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


def make_aircraft(src):
    data = os.path.join(src, "fgvc-aircraft-2013b", "data")
    # the family and manufacturer lists are in another order than the variants: labels must follow each file
    orders = {"variant": [0, 1, 2], "family": [1, 2, 0], "manufacturer": [2, 0, 1]}
    for level, names in AIRCRAFT.items():
        write(os.path.join(data, NAMES_FILE[level]), [names[i] for i in orders[level]])
    rows = {s: {lv: [] for lv in AIRCRAFT} for s in ("trainval", "test", "train", "val")}
    expected = {s: {lv: {} for lv in AIRCRAFT} for s in rows}
    n = 1025790
    for c in range(3):
        for part in ("train", "val", "test", "test"):
            n += 1
            color = jpeg(os.path.join(data, "images", f"{n:07d}.jpg"))
            for s in ({"train": ("train", "trainval"), "val": ("val", "trainval")}.get(part, (part,))):
                for level, names in AIRCRAFT.items():
                    rows[s][level].append(f"{n:07d} {names[c]}")
                    expected[s][level][f"{n:07d}.jpg"] = (orders[level].index(c), color, None)
    for s, by_level in rows.items():
        for level, lines in by_level.items():
            write(os.path.join(data, f"images_{level}_{s}.txt"), lines)
    return data, expected


@pytest.mark.parametrize("level", ["variant", "family", "manufacturer"])
def test_aircraft(tmp_path, capsys, level):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    data, expected = make_aircraft(src)
    argv = ["aircraft", "--src", src, "--dst", dst] + ([] if level == "variant" else ["--level", level])
    out, err = prepare_ok(argv, capsys)
    names = open(os.path.join(data, NAMES_FILE[level])).read().split("\n")[:3]
    assert classes_of(dst, 3) == names
    for split, list_name in (("trainval", "train_list.txt"), ("test", "val_list.txt"),
                             ("train", "subtrain_list.txt"), ("val", "subval_list.txt")):
        load_split(dst, list_name, 3, expected[split][level])
    assert "the official split has 6667" in err and "the official split has 3333" in err
    official_classes = {"variant": 100, "family": 70, "manufacturer": 30}[level]
    assert f"the official data set has {official_classes}" in err


def test_aircraft_unknown_class_and_missing_names(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    data, _ = make_aircraft(src)
    path = os.path.join(data, "images_variant_test.txt")
    with open(path, "a") as f:
        f.write("1025791 747-400\n")
    prepare_fails(["aircraft", "--src", src, "--dst", dst], capsys, f"{path}:7: unknown variant '747-400'")
    os.remove(os.path.join(data, "families.txt"))
    prepare_fails(["aircraft", "--src", src, "--dst", dst, "--level", "family"], capsys,
                  "missing metadata file", os.path.join(data, "families.txt"))


# ------------------------------------------------------------------------------------------------------ Cars
CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]


def _cars_annotations(rows):
    """The devkit's struct array: 1 x N, each field a MATLAB matrix."""
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    ann = np.zeros((1, len(rows)), dtype=dtype)
    for i, (fname, cls) in enumerate(rows):
        ann[0, i] = (np.array([[1]], np.uint8), np.array([[2]], np.uint8), np.array([[7]], np.uint8),
                     np.array([[6]], np.uint8), np.array([[cls]], np.uint8), np.array([fname]))
    return ann


def make_cars(src):
    import scipy.io
    devkit = os.path.join(src, "devkit")
    os.makedirs(devkit)
    names = np.empty((1, len(CARS)), dtype=object)
    names[0, :] = CARS
    scipy.io.savemat(os.path.join(devkit, "cars_meta.mat"), {"class_names": names})
    expected = {}
    for folder, mat_dir, mat_name, n0 in (("cars_train", devkit, "cars_train_annos.mat", 0),
                                          ("cars_test", src, "cars_test_annos_withlabels.mat", 100)):
        rows, exp = [], {}
        for k in range(6):
            fname = f"{n0 + k + 1:05d}.jpg"
            cls = [3, 1, 2][k % 3]
            exp[fname] = (cls - 1, jpeg(os.path.join(src, folder, fname)), None)
            rows.append((fname, cls))
        scipy.io.savemat(os.path.join(mat_dir, mat_name), {"annotations": _cars_annotations(rows)})
        expected[folder] = exp
    return expected


def test_cars(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    expected = make_cars(src)
    out, err = prepare_ok(["cars", "--src", src, "--dst", dst], capsys)
    assert classes_of(dst, 3) == CARS
    load_split(dst, "train_list.txt", 3, expected["cars_train"])
    load_split(dst, "val_list.txt", 3, expected["cars_test"])
    assert "the official split has 8144" in err and "the official split has 8041" in err


@pytest.mark.parametrize("bad", [0, 4])
def test_cars_bad_class_id(tmp_path, capsys, bad):
    import scipy.io
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_cars(src)
    path = os.path.join(src, "devkit", "cars_train_annos.mat")
    scipy.io.savemat(path, {"annotations": _cars_annotations([("00001.jpg", 1), ("00002.jpg", bad)])})
    prepare_fails(["cars", "--src", src, "--dst", dst], capsys, path, f"annotation 2 (00002.jpg) has class {bad}")


def test_cars_test_labels_missing(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_cars(src)
    os.remove(os.path.join(src, "cars_test_annos_withlabels.mat"))
    prepare_fails(["cars", "--src", src, "--dst", dst], capsys,
                  "missing metadata file: cars_test_annos_withlabels.mat")


# ------------------------------------------------------------------------------------------------------- DTD
DTD = ["banded", "blotchy", "zigzagged"]


def make_dtd(src):
    root = os.path.join(src, "dtd")
    colors = {}
    for c, cls in enumerate(DTD):
        for k in range(1, 7):
            name = f"{cls}_{k:04d}.jpg"
            colors[name] = (c, jpeg(os.path.join(root, "images", cls, name)), None)
    expected = {}
    for n in (1, 2):
        for p, part in enumerate(("train", "val", "test")):
            # split n puts image k of every class into part (k + n + p) % 3
            rel = [f"{cls}/{cls}_{k:04d}.jpg" for cls in DTD for k in range(1, 7) if (k + n) % 3 == p]
            write(os.path.join(root, "labels", f"{part}{n}.txt"), rel)
            expected[(n, part)] = {os.path.basename(r): colors[os.path.basename(r)] for r in rel}
    return root, expected


def test_dtd(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root, expected = make_dtd(src)
    out, err = prepare_ok(["dtd", "--src", src, "--dst", dst, "--split", "2"], capsys)
    assert classes_of(dst, 3) == DTD
    load_split(dst, "train_list.txt", 3, expected[(2, "train")])
    load_split(dst, "val_list.txt", 3, expected[(2, "val")])
    load_split(dst, "test_list.txt", 3, expected[(2, "test")])
    load_split(dst, "trainval_list.txt", 3, {**expected[(2, "train")], **expected[(2, "val")]})
    assert "the official split has 1880" in err
    prepare_ok(["dtd", "--src", src, "--dst", dst], capsys)   # split 1 by default
    load_split(dst, "train_list.txt", 3, expected[(1, "train")])
    # a class that has no folder, and a missing split file
    path = os.path.join(root, "labels", "val1.txt")
    with open(path, "a") as f:
        f.write("woven/woven_0001.jpg\n")
    prepare_fails(["dtd", "--src", src, "--dst", dst], capsys, f"{path}:7: class 'woven'")
    os.remove(os.path.join(root, "labels", "test2.txt"))
    prepare_fails(["dtd", "--src", src, "--dst", dst, "--split", "2"], capsys,
                  "missing metadata file", os.path.join(root, "labels", "test2.txt"))


# ----------------------------------------------------------------------------------------------- Caltech-256
CALTECH = ["001.ak47", "002.american-flag", "003.backpack", "257.clutter"]


def make_caltech(src):
    root = os.path.join(src, "256_ObjectCategories")
    colors = {}
    for c, folder in enumerate(CALTECH):
        for k in range(1, 7):
            name = f"{folder[:3]}_{k:04d}.jpg"
            colors[name] = (c, jpeg(os.path.join(root, folder, name)), None)
    write(os.path.join(root, "001.ak47", "notes.txt"), ["not an image"])
    return colors


def _names(dst, list_name):
    return sorted(line.split()[0] for line in open(os.path.join(dst, list_name)))


def test_caltech256(tmp_path, capsys):
    src = str(tmp_path / "src")
    colors = make_caltech(src)
    dst = str(tmp_path / "a")
    out, err = prepare_ok(["caltech256", "--src", src, "--dst", dst, "--train-per-class", "3"], capsys)
    assert classes_of(dst, 3) == ["ak47", "american-flag", "backpack"]
    lines = {n: open(os.path.join(dst, n)).read().splitlines() for n in ("train_list.txt", "val_list.txt")}
    names = {n: [os.path.basename(x.split()[0]) for x in v] for n, v in lines.items()}
    assert len(names["train_list.txt"]) == 9 and len(names["val_list.txt"]) == 9
    assert not set(names["train_list.txt"]) & set(names["val_list.txt"])
    for n in names:
        load_split(dst, n, 3, {k: colors[k] for k in names[n]})
        for c in range(3):   # exactly 3 per class in each split
            assert sum(colors[k][0] == c for k in names[n]) == 3
    # deterministic; another seed draws differently; a fixed number for evaluation; the clutter class on request
    dst_b = str(tmp_path / "b")
    prepare_ok(["caltech256", "--src", src, "--dst", dst_b, "--train-per-class", "3"], capsys)
    assert _names(dst, "train_list.txt") == _names(dst_b, "train_list.txt")
    prepare_ok(["caltech256", "--src", src, "--dst", dst_b, "--train-per-class", "3", "--seed", "5"], capsys)
    assert _names(dst, "train_list.txt") != _names(dst_b, "train_list.txt")
    prepare_ok(["caltech256", "--src", src, "--dst", dst_b, "--train-per-class", "3", "--eval-per-class", "2",
                "--clutter"], capsys)
    assert classes_of(dst_b, 4)[3] == "clutter"
    val = open(os.path.join(dst_b, "val_list.txt")).read().splitlines()
    assert len(val) == 8 and sorted(int(x.split()[1]) for x in val) == [0, 0, 1, 1, 2, 2, 3, 3]
    prepare_fails(["caltech256", "--src", src, "--dst", dst_b, "--train-per-class", "6"], capsys,
                  "6 images, need at least 7")


# -------------------------------------------------------------------------------------------------- ImageNet
WNIDS = ["n01440764", "n01443537", "n02119789"]
SYNSETS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
           "n02119789": "kit fox, Vulpes macrotis"}


def make_imagenet(src, val_layout):
    root = os.path.join(src, "ILSVRC", "Data", "CLS-LOC") if val_layout == "loc" else src
    train, val = {}, {}
    for c, w in enumerate(WNIDS):
        for k in range(2):
            name = f"{w}_{k + 1}.JPEG"
            train[name] = (c, jpeg(os.path.join(root, "train", w, name)), None)
    # validation image i (1-based) is of class WNIDS[(i * 2) % 3]
    truth = [(i, WNIDS[(i * 2) % 3]) for i in range(1, 7)]
    for i, w in truth:
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        folder = os.path.join(root, "val", w) if val_layout == "folders" else os.path.join(root, "val")
        val[name] = (WNIDS.index(w), jpeg(os.path.join(folder, name)), None)
    if val_layout == "loc":
        rows = ["ImageId,PredictionString"] + [f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 5 6 70 80"
                                               for i, w in truth[::-1]]
        write(os.path.join(src, "LOC_val_solution.csv"), rows)
        write(os.path.join(src, "LOC_synset_mapping.txt"), [f"{w} {SYNSETS[w]}" for w in WNIDS])
    elif val_layout == "plain":
        write(os.path.join(src, "val_labels.txt"), [f"ILSVRC2012_val_{i:08d}.JPEG {w}" for i, w in truth])
    elif val_layout == "devkit":
        import scipy.io
        data = os.path.join(src, "ILSVRC2012_devkit_t12", "data")
        os.makedirs(data)
        ilsvrc_id = {"n02119789": 1, "n01440764": 2, "n01443537": 3}   # devkit ids are not in wnid order
        dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
        syn = np.zeros((4, 1), dtype=dtype)
        for j, w in enumerate(["n02119789", "n01440764", "n01443537"]):
            syn[j, 0] = (np.array([[ilsvrc_id[w]]]), np.array([w]), np.array([SYNSETS[w]]), np.array([[0]]))
        syn[3, 0] = (np.array([[1001]]), np.array(["n00001740"]), np.array(["entity"]), np.array([[3]]))
        scipy.io.savemat(os.path.join(data, "meta.mat"), {"synsets": syn})
        write(os.path.join(data, "ILSVRC2012_validation_ground_truth.txt"), [str(ilsvrc_id[w]) for _, w in truth])
    return train, val


@pytest.mark.parametrize("val_layout", ["folders", "loc", "plain", "devkit"])
def test_imagenet(tmp_path, capsys, val_layout):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    train, val = make_imagenet(src, val_layout)
    out, err = prepare_ok(["imagenet", "--src", src, "--dst", dst], capsys)
    names = classes_of(dst, 3)
    assert names == ([SYNSETS[w] for w in WNIDS] if val_layout in ("loc", "devkit") else WNIDS)
    assert open(os.path.join(dst, "wnids.txt")).read().split() == WNIDS
    load_split(dst, "train_list.txt", 3, train)
    load_split(dst, "val_list.txt", 3, val)
    assert "the official split has 1281167" in err and "the official split has 50000" in err


def test_imagenet_flat_val_errors(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_imagenet(src, "plain")
    path = os.path.join(src, "val_labels.txt")
    with open(path, "a") as f:
        f.write("ILSVRC2012_val_00000009.JPEG n09999999\n")
    prepare_fails(["imagenet", "--src", src, "--dst", dst], capsys, f"{path}:7: wnid 'n09999999'")
    os.remove(path)
    prepare_fails(["imagenet", "--src", src, "--dst", dst], capsys, "missing metadata file", "LOC_val_solution.csv",
                  "--val-labels")
    other = str(tmp_path / "elsewhere.txt")
    write(other, [f"ILSVRC2012_val_{i:08d}.JPEG {WNIDS[(i * 2) % 3]}" for i in range(1, 6)])
    _, err = prepare_ok(["imagenet", "--src", src, "--dst", dst, "--val-labels", other], capsys)
    assert "1 file(s) have no label" in err
    assert len(open(os.path.join(dst, "val_list.txt")).read().splitlines()) == 5


# ---------------------------------------------------------------------------------------------- plain folders
def make_folders(src, classes, parts=("train", "val")):
    expected = {}
    for part in parts:
        exp = {}
        for c, cls in enumerate(classes):
            for k in range(2):
                name = f"{part}_{c}_{k} photo.jpg" if " " in cls else f"{part}_{c}_{k}.jpg"
                exp[name] = (c, jpeg(os.path.join(src, part, cls, name)), None)
        expected[part] = exp
    return expected


def test_folder(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    expected = make_folders(src, ["finch", "robin"], ("train", "val", "test"))
    prepare_ok(["folder", "--src", src, "--dst", dst], capsys)
    assert classes_of(dst, 2) == ["finch", "robin"]
    load_split(dst, "train_list.txt", 2, expected["train"])
    load_split(dst, "val_list.txt", 2, expected["val"])
    load_split(dst, "test_list.txt", 2, expected["test"])
    os.makedirs(os.path.join(src, "val", "wren"))
    jpeg(os.path.join(src, "val", "wren", "w.jpg"))
    prepare_fails(["folder", "--src", src, "--dst", dst], capsys, "class folder 'wren'", "not a class of the training")


def test_folder_whitespace_needs_link(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    classes = ["7 up", "black swan", "robin"]     # '7 up' would read back as label 7 without care
    expected = make_folders(src, classes)
    before = snapshot(src)
    prepare_fails(["folder", "--src", src, "--dst", dst], capsys, "contain whitespace", "--link")
    prepare_ok(["folder", "--src", src, "--dst", dst, "--link"], capsys)
    assert classes_of(dst, 3) == classes
    samples = load_split(dst, "train_list.txt", 3, {k.replace(" ", "_"): v for k, v in expected["train"].items()})
    load_split(dst, "val_list.txt", 3, {k.replace(" ", "_"): v for k, v in expected["val"].items()})
    assert all(os.path.islink(s.path) and s.path.startswith(os.path.join(dst, "images", "")) for s in samples)
    first = read_bytes(dst)
    prepare_ok(["folder", "--src", src, "--dst", dst, "--link"], capsys)
    assert read_bytes(dst) == first
    assert snapshot(src) == before


# ------------------------------------------------------------------------------------------------------ general
@pytest.mark.parametrize("dataset,builder,remove", [
    ("cub", lambda s: make_cub(s), "CUB_200_2011/train_test_split.txt"),
    ("nabirds", lambda s: make_nabirds(s), "nabirds/classes.txt"),
    ("inat21_mini", lambda s: make_inat(s, "train_mini.json", "train_mini"), "inat21/val.json"),
    ("cars", lambda s: make_cars(s), "devkit/cars_meta.mat"),
])
def test_missing_metadata_file_is_named(tmp_path, capsys, dataset, builder, remove):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    builder(src)
    os.remove(os.path.join(src, remove))
    prepare_fails([dataset, "--src", src, "--dst", dst], capsys, "missing metadata file",
                  os.path.basename(remove))
    assert not os.path.exists(os.path.join(dst, "train_list.txt"))


def test_dst_inside_src_is_refused(tmp_path, capsys):
    src = str(tmp_path / "src")
    make_cub(src)
    before = snapshot(src)
    prepare_fails(["cub", "--src", src, "--dst", os.path.join(src, "lists")], capsys, "is inside --src")
    prepare_fails(["cub", "--src", src, "--dst", src], capsys, "is inside --src")
    assert snapshot(src) == before


def test_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "common.prepare", "--help"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for name in ("imagenet", "cub", "nabirds", "inat21", "inat21_mini", "aircraft", "cars", "dtd", "caltech256",
                 "folder"):
        assert f"    {name}" in proc.stdout
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    _, train, _ = make_cub(src)
    proc = subprocess.run([sys.executable, "-m", "common.prepare", "cub", "--src", src, "--dst", dst],
                          cwd=str(tmp_path), env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    load_split(dst, "train_list.txt", 3, train)
    proc = subprocess.run([sys.executable, "-m", "common.prepare", "cub", "--src", str(tmp_path / "nowhere"),
                           "--dst", dst], cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error: --src" in proc.stderr and "Traceback" not in proc.stderr


# Each paper config reads what `python -m common.prepare <dataset> --dst data/<dataset>[_variant]` writes, with the
# class count of that data set.
CLASSES = {"imagenet": 1000, "cub": 200, "nabirds": 555, "inat21_mini": 10000, "inat21": 10000, "aircraft": 100,
           "cars": 196, "dtd": 47, "caltech256": 256}


def _method_of(cfg_dir):
    import importlib
    module = importlib.import_module(f"{cfg_dir}.method")
    cls = [v for k, v in vars(module).items() if k.endswith("Method") and k != "ClassificationMethod"
           and isinstance(v, type)]
    return cls[0]()


@pytest.mark.parametrize("method_dir", ["resmlp", "dynamic_mlp", "pim", "transfer"])
def test_every_paper_config_points_at_the_prepared_layout(method_dir):
    from common.cli import build_parser, config_from_args
    from tests.helpers import REPO
    folder = os.path.join(REPO, "configs", method_dir)
    checked = 0
    for name in sorted(os.listdir(folder)):
        if name.startswith("demo") or name.endswith("_recipe.yaml"):
            continue
        method = _method_of(method_dir)
        args = build_parser().parse_args(["-cfg", os.path.join(folder, name)])
        c = config_from_args(args, method.get_config())
        path = c.DATA.DATA_PATH
        assert path.startswith("data/") and c.DATA.DATASET == "list", (name, path, c.DATA.DATASET)
        dataset = path[len("data/"):]
        known = [d for d in CLASSES if dataset == d or dataset.startswith(d + "_")]
        assert known, f"{name}: {path} is not a data set common.prepare writes"
        prepared = max(known, key=len)
        assert prepared in DATASETS
        assert c.MODEL.NUM_CLASSES == CLASSES[prepared], (name, c.MODEL.NUM_CLASSES)
        checked += 1
    assert checked >= 3
