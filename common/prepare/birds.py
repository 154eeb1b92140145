"""CUB-200-2011 and NABirds: `images.txt`, `image_class_labels.txt`, `train_test_split.txt`, `classes.txt`, `images/`.

Both list `<image id> <value>` per line, joined on the image id. CUB's class ids are 1..200 and its class names
carry a number prefix (`001.Black_footed_Albatross` -> `Black_footed_Albatross`). NABirds' class ids are sparse and
its `classes.txt` holds the whole hierarchy (1011 nodes, names with spaces); only the classes that have images (the
555 leaf classes everyone trains on) are kept, renumbered 0..554 in the order of their original ids, and
`class_mapping.txt` (`new_id original_id name`) records the renumbering.
"""
import os
import re

from .core import Entry, Prepared, PrepareError, Split, find_root, parse_int, read_rows

FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _read_common(root, what):
    paths = {f: os.path.join(root, f) for f in FILES}
    images = {}
    for origin, (img_id, rel) in read_rows(paths["images.txt"], 2, f"{what} image list", maxsplit=1):
        if img_id in images:
            raise PrepareError(f"{origin}: image id {img_id} is listed twice")
        images[img_id] = (rel.strip(), origin)
    class_names = {}
    for origin, (cid, name) in read_rows(paths["classes.txt"], 2, f"{what} class names", maxsplit=1):
        cid = parse_int(cid, origin, "class id")
        if cid in class_names:
            raise PrepareError(f"{origin}: class id {cid} is listed twice")
        class_names[cid] = name.strip()
    labels = {}
    for origin, (img_id, cid) in read_rows(paths["image_class_labels.txt"], 2, f"{what} labels"):
        cid = parse_int(cid, origin, "class id")
        if img_id not in images:
            raise PrepareError(f"{origin}: image id {img_id} is not in {paths['images.txt']}")
        if cid not in class_names:
            raise PrepareError(f"{origin}: class id {cid} is not in {paths['classes.txt']}")
        labels[img_id] = (cid, origin)
    is_train = {}
    for origin, (img_id, flag) in read_rows(paths["train_test_split.txt"], 2, f"{what} train/test split"):
        if img_id not in images:
            raise PrepareError(f"{origin}: image id {img_id} is not in {paths['images.txt']}")
        if flag not in ("0", "1"):
            raise PrepareError(f"{origin}: is_training_image must be 1 or 0, got '{flag}'")
        is_train[img_id] = flag == "1"
    for img_id, (_, origin) in images.items():
        if img_id not in labels:
            raise PrepareError(f"{origin}: image id {img_id} has no class in {paths['image_class_labels.txt']}")
        if img_id not in is_train:
            raise PrepareError(f"{origin}: image id {img_id} is in neither split of "
                               f"{paths['train_test_split.txt']}")
    return images, class_names, labels, is_train


def _splits(root, images, labels, is_train, label_of, official):
    train, val = [], []
    for img_id, (rel, origin) in images.items():
        cid = labels[img_id][0]
        entry = Entry(os.path.join(root, "images", rel), label_of[cid], (), origin)
        (train if is_train[img_id] else val).append(entry)
    return [Split("train_list.txt", train, official[0], "official train split"),
            Split("val_list.txt", val, official[1], "official test split")]


def read_cub(src, opts):
    root = find_root(src, "images.txt", ("CUB_200_2011",))
    images, class_names, labels, is_train = _read_common(root, "CUB")
    ids = sorted(class_names)
    if ids != list(range(1, len(ids) + 1)):
        raise PrepareError(f"{os.path.join(root, 'classes.txt')}: class ids must be 1..{len(ids)}, got "
                           f"{ids[:5]}{' ...' if len(ids) > 5 else ''}")
    names = [re.sub(r"^\d+\.", "", class_names[c]) for c in ids]
    label_of = {c: c - 1 for c in ids}
    splits = _splits(root, images, labels, is_train, label_of, (5994, 5794))
    return Prepared(names, splits, official_classes=200)


def read_nabirds(src, opts):
    root = find_root(src, "images.txt", ("nabirds",))
    images, class_names, labels, is_train = _read_common(root, "NABirds")
    used = sorted({cid for cid, _ in labels.values()})
    label_of = {c: i for i, c in enumerate(used)}
    names = [class_names[c] for c in used]
    mapping = [f"{i} {c} {class_names[c]}" for i, c in enumerate(used)]
    splits = _splits(root, images, labels, is_train, label_of, (23929, 24633))
    notes = [f"class ids renumbered: {len(used)} classes with images out of {len(class_names)} in classes.txt "
             f"(class_mapping.txt: new_id original_id name)"]
    return Prepared(names, splits, official_classes=555, extra_files={"class_mapping.txt": mapping}, notes=notes)
