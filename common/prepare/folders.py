"""Data sets that are folders of images: DTD, Caltech-256, ImageNet-1k and a plain class-per-folder tree.

DTD (`dtd/images/<class>/*.jpg`, `dtd/labels/{train,val,test}<N>.txt` listing `banded/banded_0002.jpg`): classes are
the sorted folders of `images/`; train_list = train<N>, val_list = val<N>, test_list = test<N> (the split papers
report), trainval_list = train<N> + val<N>.

Caltech-256 (`256_ObjectCategories/001.ak47/001_0001.jpg`): 257.clutter left out unless `--clutter`; per class,
`--train-per-class` (30) images drawn with `--seed` for training, the rest (or `--eval-per-class K`) for
evaluation. Each class is shuffled by its own generator seeded from (seed, folder name), so the draw is the same on
every machine and does not change when other classes are added or removed.

ImageNet-1k: `train/<wnid>/*.JPEG`; `val/<wnid>/*.JPEG`, or a flat `val/` labelled by `LOC_val_solution.csv`
(Kaggle), `val_labels.txt` (`filename wnid` lines) or the devkit (`ILSVRC2012_devkit_t12/data/meta.mat` +
`ILSVRC2012_validation_ground_truth.txt`). Labels are the sorted wnids (the standard 0..999); names from
`LOC_synset_mapping.txt`, else the devkit's meta.mat, else the wnids. The Kaggle layout
(`ILSVRC/Data/CLS-LOC/{train,val}`) is found by itself.

folder: `train/<class>/...` and `val/<class>/...` (or `test/`; with both, val -> val_list, test -> test_list);
labels are the sorted folder names of train/.
"""
import csv
import os
import random
import re

from .core import (Entry, Prepared, PrepareError, Split, find_file, find_root, images_under, loadmat, read_rows,
                   require_dir, require_file, scan_tree, sorted_subdirs, warn)

# ------------------------------------------------------------------------------------------------------- DTD


def read_dtd(src, opts):
    n = getattr(opts, "split", 1)
    root = find_root(src, "labels", ("dtd",))
    image_root = require_dir(os.path.join(root, "images"), "DTD images")
    classes = sorted_subdirs(image_root)
    index = {c: i for i, c in enumerate(classes)}
    parts = {}
    for part in ("train", "val", "test"):
        path = os.path.join(root, "labels", f"{part}{n}.txt")
        entries = []
        for origin, (rel,) in read_rows(path, 1, f"DTD {part} split {n}", maxsplit=0):
            cls = rel.replace("\\", "/").split("/")[0]
            if cls not in index or "/" not in rel:
                raise PrepareError(f"{origin}: class '{cls}' of '{rel}' is not a folder of {image_root}")
            entries.append(Entry(os.path.join(image_root, *rel.split("/")), index[cls], (), origin))
        parts[part] = entries
    splits = [Split("train_list.txt", parts["train"], 1880, f"train{n}"),
              Split("val_list.txt", parts["val"], 1880, f"val{n}"),
              Split("test_list.txt", parts["test"], 1880, f"test{n} (evaluate with -opts DATA.VAL_LIST test_list.txt)"),
              Split("trainval_list.txt", parts["train"] + parts["val"], 3760, f"train{n} + val{n}")]
    return Prepared(classes, splits, official_classes=47, notes=[f"split {n}"])


# ------------------------------------------------------------------------------------------------ Caltech-256
CLUTTER = "257.clutter"


def read_caltech256(src, opts):
    seed = getattr(opts, "seed", 0)
    per_class = getattr(opts, "train_per_class", 30)
    eval_per_class = getattr(opts, "eval_per_class", None)
    clutter = getattr(opts, "clutter", False)
    root = src
    if os.path.isdir(os.path.join(src, "256_ObjectCategories")):
        root = os.path.join(src, "256_ObjectCategories")
    folders = [d for d in sorted_subdirs(root) if re.match(r"^\d+\.", d)]
    if not folders:
        raise PrepareError(f"{root}: no class folders named like '001.ak47' (expected 256_ObjectCategories/)")
    if not clutter:
        folders = [d for d in folders if d != CLUTTER]
    classes = [re.sub(r"^\d+\.", "", d) for d in folders]
    train, evaluation = [], []
    for label, folder in enumerate(folders):
        files = images_under(os.path.join(root, folder), recursive=False)
        need = per_class + (eval_per_class if eval_per_class is not None else 1)
        if len(files) < need:
            raise PrepareError(f"{os.path.join(root, folder)}: {len(files)} images, need at least {need} "
                               f"({per_class} for training + {eval_per_class or 1} for evaluation)")
        rng = random.Random(f"caltech256:{seed}:{folder}")
        order = list(files)
        rng.shuffle(order)
        chosen = sorted(order[:per_class])
        rest = order[per_class:]
        rest = sorted(rest[:eval_per_class] if eval_per_class is not None else rest)
        train.extend(Entry(p, label, (), os.path.join(root, folder)) for p in chosen)
        evaluation.extend(Entry(p, label, (), os.path.join(root, folder)) for p in rest)
    official_train = official_eval = None
    if per_class == 30 and eval_per_class is None:   # the full download: 30,607 images, 827 of them clutter
        official_train = 30 * (257 if clutter else 256)
        official_eval = (30607 if clutter else 29780) - official_train
    eval_note = f"{eval_per_class} per class" if eval_per_class is not None else "the rest of each class"
    splits = [Split("train_list.txt", train, official_train, f"{per_class} per class, seed {seed}"),
              Split("val_list.txt", evaluation, official_eval, eval_note)]
    return Prepared(classes, splits, official_classes=257 if clutter else 256,
                    notes=[f"clutter class {'included' if clutter else 'left out'}"])


# -------------------------------------------------------------------------------------------------- ImageNet
WNID = re.compile(r"^n\d{8}$")


def _imagenet_root(src):
    for cand in (src, os.path.join(src, "ILSVRC", "Data", "CLS-LOC"), os.path.join(src, "imagenet")):
        if os.path.isdir(os.path.join(cand, "train")):
            return cand
    raise PrepareError(f"missing folder: {os.path.join(src, 'train')} (ImageNet train/<wnid>/*.JPEG; the Kaggle "
                       f"layout ILSVRC/Data/CLS-LOC/train is found too)")


def _read_loc_solution(path):
    rows = []
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise PrepareError(f"{path}:1: expected the header 'ImageId,PredictionString', got {header}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2 or not row[1].split():
                raise PrepareError(f"{path}:{lineno}: expected 'ImageId,wnid ...', got {','.join(row)}")
            image_id, wnid = row[0].strip(), row[1].split()[0]
            name = image_id if os.path.splitext(image_id)[1] else image_id + ".JPEG"
            rows.append((name, wnid, f"{path}:{lineno}"))
    return rows


def _read_val_labels(path):
    return [(parts[0], parts[1], origin) for origin, parts in read_rows(path, 2, "ImageNet val labels")]


def _read_devkit(gt_path, meta_path):
    import numpy as np
    m = loadmat(meta_path)
    if "synsets" not in m or not {"ILSVRC2012_ID", "WNID"} <= set(np.atleast_1d(m["synsets"]).dtype.names or ()):
        raise PrepareError(f"{meta_path}: no 'synsets' struct array with ILSVRC2012_ID and WNID")
    syn = np.atleast_1d(m["synsets"])
    by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in syn}
    words = {str(s["WNID"]): str(s["words"]) for s in syn} if "words" in syn.dtype.names else {}
    rows = []
    for i, (origin, (ilsvrc_id,)) in enumerate(read_rows(gt_path, 1, "ImageNet devkit val ground truth",
                                                         maxsplit=0), 1):
        try:
            wnid = by_id[int(ilsvrc_id)]
        except (ValueError, KeyError):
            raise PrepareError(f"{origin}: ILSVRC2012 id '{ilsvrc_id}' is not in {meta_path}") from None
        rows.append((f"ILSVRC2012_val_{i:08d}.JPEG", wnid, origin))
    return rows, words


def read_imagenet(src, opts):
    root = _imagenet_root(src)
    train_dir = os.path.join(root, "train")
    wnids = sorted_subdirs(train_dir)
    if not wnids:
        raise PrepareError(f"{train_dir}: no class folders")
    odd = [w for w in wnids if not WNID.match(w)]
    if odd:
        warn(f"{train_dir}: {len(odd)} class folder(s) are not WordNet ids, e.g. '{odd[0]}'")
    index = {w: i for i, w in enumerate(wnids)}
    train = scan_tree(train_dir, wnids, "ImageNet train", index)

    val_dir = require_dir(os.path.join(root, "val"), "ImageNet val")
    meta_dirs = list(dict.fromkeys([src, root]))
    devkit_dirs = [os.path.join(d, "ILSVRC2012_devkit_t12", "data") for d in meta_dirs] + meta_dirs
    devkit_words = {}
    if sorted_subdirs(val_dir):
        val = scan_tree(val_dir, wnids, "ImageNet val", index)
        source = "val/<wnid>/ folders"
    else:
        labels_file = getattr(opts, "val_labels", None)
        if labels_file:
            require_file(labels_file, "--val-labels")
            rows = (_read_loc_solution(labels_file) if labels_file.lower().endswith(".csv")
                    else _read_val_labels(labels_file))
            source = labels_file
        else:
            loc = find_file(["LOC_val_solution.csv"], meta_dirs)
            plain = find_file(["val_labels.txt"], meta_dirs)
            gt = find_file(["ILSVRC2012_validation_ground_truth.txt"], devkit_dirs)
            meta = find_file(["meta.mat"], devkit_dirs)
            if loc:
                rows, source = _read_loc_solution(loc), loc
            elif plain:
                rows, source = _read_val_labels(plain), plain
            elif gt and meta:
                (rows, devkit_words), source = _read_devkit(gt, meta), gt
            else:
                raise PrepareError(
                    f"missing metadata file: {val_dir} is flat, and no ground truth was found: looked for "
                    f"LOC_val_solution.csv or val_labels.txt in {', '.join(meta_dirs)}, and "
                    f"ILSVRC2012_validation_ground_truth.txt + meta.mat in {', '.join(devkit_dirs)} "
                    f"(or pass --val-labels FILE)")
        val = []
        listed = set()
        for name, wnid, origin in rows:
            if wnid not in index:
                raise PrepareError(f"{origin}: wnid '{wnid}' is not a class folder of {train_dir}")
            if name in listed:
                raise PrepareError(f"{origin}: '{name}' is labelled twice")
            listed.add(name)
            val.append(Entry(os.path.join(val_dir, name), index[wnid], (), origin))
        val.sort(key=lambda e: e.path)
        unlabelled = [f for f in os.listdir(val_dir) if f not in listed and not f.startswith(".")]
        if unlabelled:
            warn(f"{val_dir}: {len(unlabelled)} file(s) have no label in {source} and are left out, "
                 f"e.g. {sorted(unlabelled)[0]}")
    names = dict(devkit_words)
    mapping = find_file(["LOC_synset_mapping.txt"], meta_dirs)
    if mapping:
        names = {parts[0]: parts[1].strip() if len(parts) > 1 else parts[0]
                 for _, parts in read_rows(mapping, 1, "synset names", maxsplit=1)}
    class_names = [names.get(w, w) for w in wnids]
    if names and any(w not in names for w in wnids):
        warn(f"{mapping or 'devkit meta.mat'}: no name for {sum(w not in names for w in wnids)} wnid(s); "
             f"the wnid is used")
    splits = [Split("train_list.txt", train, 1281167, "train/"),
              Split("val_list.txt", val, 50000, f"labels from {source}")]
    return Prepared(class_names, splits, official_classes=1000,
                    extra_files={"wnids.txt": wnids}, notes=["wnids.txt: the wnid of each label, in label order"])


# ------------------------------------------------------------------------------------------- plain folder tree
def read_folder(src, opts):
    train_dir = require_dir(os.path.join(src, "train"), "class-per-folder training tree")
    classes = sorted_subdirs(train_dir)
    if not classes:
        raise PrepareError(f"{train_dir}: no class folders")
    index = {c: i for i, c in enumerate(classes)}
    splits = [Split("train_list.txt", scan_tree(train_dir, classes, "train/", index), None, "train/")]
    have = [d for d in ("val", "test") if os.path.isdir(os.path.join(src, d))]
    if not have:
        raise PrepareError(f"missing folder: {os.path.join(src, 'val')} (or {os.path.join(src, 'test')})")
    for d in have:
        list_name = "val_list.txt" if d == have[0] else "test_list.txt"
        splits.append(Split(list_name, scan_tree(os.path.join(src, d), classes, f"{d}/", index), None, f"{d}/"))
    return Prepared(classes, splits)
