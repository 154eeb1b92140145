"""FGVC-Aircraft 2013b and Stanford Cars.

Aircraft (`fgvc-aircraft-2013b/data/`): `images_<level>_<split>.txt` lines `<image id> <class name>` (names may hold
spaces and slashes), class names in `variants.txt` / `families.txt` / `manufacturers.txt` (label = line order), images
`images/<id>.jpg`. train_list = trainval (6,667), val_list = test (3,333); the official halves of trainval are
written too, as `subtrain_list.txt` (train, 3,334) and `subval_list.txt` (val, 3,333), for tuning without the test
split.

Cars: devkit `cars_meta.mat` (class_names), `cars_train_annos.mat` and `cars_test_annos_withlabels.mat` (struct
array `annotations` with bbox_x1.. bbox_y2, 1-based `class`, `fname`), images in `cars_train/` and `cars_test/`.
The .mat files are looked for in SRC and SRC/devkit (and SRC/car_devkit/devkit).
"""
import os

from .core import (Entry, Prepared, PrepareError, Split, find_file, find_root, loadmat, read_rows, require_dir,
                   require_file)

LEVELS = {"variant": ("variants.txt", 100), "family": ("families.txt", 70), "manufacturer": ("manufacturers.txt", 30)}
AIRCRAFT_SPLITS = (("trainval", "train_list.txt", 6667, "official trainval split"),
                   ("test", "val_list.txt", 3333, "official test split"),
                   ("train", "subtrain_list.txt", 3334, "official train half of trainval"),
                   ("val", "subval_list.txt", 3333, "official val half of trainval"))


def read_aircraft(src, opts):
    level = getattr(opts, "level", "variant")
    root = src
    for cand in (os.path.join(src, "data"), os.path.join(src, "fgvc-aircraft-2013b", "data"), src):
        if os.path.isdir(os.path.join(cand, "images")) or os.path.isfile(os.path.join(cand, "variants.txt")):
            root = cand
            break
    names_file, official_classes = LEVELS[level]
    names_path = require_file(os.path.join(root, names_file), f"Aircraft {level} names")
    names = []
    with open(names_path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            name = line.strip()
            if not name:
                continue
            if name in names:
                raise PrepareError(f"{names_path}:{lineno}: class '{name}' is listed twice")
            names.append(name)
    index = {n: i for i, n in enumerate(names)}
    splits = []
    for official_name, list_name, official, note in AIRCRAFT_SPLITS:
        path = os.path.join(root, f"images_{level}_{official_name}.txt")
        if official_name in ("train", "val") and not os.path.isfile(path):
            continue   # the halves are optional
        entries = []
        for origin, (img_id, name) in read_rows(path, 2, f"Aircraft {official_name} split", maxsplit=1):
            name = name.strip()
            if name not in index:
                raise PrepareError(f"{origin}: unknown {level} '{name}' (not in {names_path})")
            entries.append(Entry(os.path.join(root, "images", f"{img_id}.jpg"), index[name], (), origin))
        splits.append(Split(list_name, entries, official, note))
    notes = [f"level: {level} ({names_file})"]
    return Prepared(names, splits, official_classes=official_classes, notes=notes)


def _loadmat(path):
    return loadmat(path)


def _annotations(path, num_classes):
    import numpy as np
    m = _loadmat(path)
    if "annotations" not in m:
        raise PrepareError(f"{path}: no 'annotations' struct array")
    ann = np.atleast_1d(m["annotations"])
    fields = ann.dtype.names or ()
    for need in ("fname", "class"):
        if need not in fields:
            extra = (" (the test file without labels: use cars_test_annos_withlabels.mat)"
                     if need == "class" else "")
            raise PrepareError(f"{path}: annotations have no '{need}' field{extra}; fields: {list(fields)}")
    rows = []
    for i, a in enumerate(ann):
        fname = str(a["fname"]).strip()
        try:
            cid = int(a["class"])
        except (TypeError, ValueError):
            raise PrepareError(f"{path}: annotation {i + 1} ({fname}) has class {a['class']!r}") from None
        if not 1 <= cid <= num_classes:
            raise PrepareError(f"{path}: annotation {i + 1} ({fname}) has class {cid}, not a class id "
                               f"1..{num_classes} of cars_meta.mat")
        rows.append((fname, cid - 1, f"{path}: annotation {i + 1}"))
    return rows


def _image_dir(src, name):
    folder = require_dir(os.path.join(src, name), "Stanford Cars images")
    nested = os.path.join(folder, name)   # some mirrors unpack cars_train/cars_train/
    return nested if os.path.isdir(nested) else folder


def read_cars(src, opts):
    import numpy as np
    src = find_root(src, "cars_train", ("stanford_cars", "stanford-cars"))
    folders = [os.path.join(src, "devkit"), src, os.path.join(src, "car_devkit", "devkit")]
    meta = find_file(["cars_meta.mat"], folders)
    if meta is None:
        raise PrepareError(f"missing metadata file: cars_meta.mat (looked in {', '.join(folders)})")
    m = _loadmat(meta)
    if "class_names" not in m:
        raise PrepareError(f"{meta}: no 'class_names' cell array")
    names = [str(n).strip() for n in np.atleast_1d(m["class_names"])]
    train_annos = find_file(["cars_train_annos.mat"], folders)
    test_annos = find_file(["cars_test_annos_withlabels.mat"], folders)
    for name, path in (("cars_train_annos.mat", train_annos), ("cars_test_annos_withlabels.mat", test_annos)):
        if path is None:
            raise PrepareError(f"missing metadata file: {name} (looked in {', '.join(folders)})")
    splits = []
    for path, folder, list_name, official, note in (
            (train_annos, "cars_train", "train_list.txt", 8144, "official train split"),
            (test_annos, "cars_test", "val_list.txt", 8041, "official test split")):
        image_dir = _image_dir(src, folder)
        entries = [Entry(os.path.join(image_dir, f), label, (), origin)
                   for f, label, origin in _annotations(path, len(names))]
        splits.append(Split(list_name, entries, official, note))
    return Prepared(names, splits, official_classes=196)
