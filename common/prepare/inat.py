"""iNaturalist 2021 (`train.json` or `train_mini.json`, and `val.json`; COCO-style json).

Labels are the `category_id` of each image's annotation, joined on `image_id` (never on list position); class names
are `categories[*].name` in category-id order (ids 0..9999). Each list line carries the metadata Dynamic MLP uses:
`latitude longitude date`, the date as YYYY-MM-DD (the calendar date as written, e.g. '2010-07-24 00:00:00+00:00'
-> 2010-07-24), each missing (null, NaN, absent, unparsable or out-of-range) field written as `nan` on its own.
"""
import datetime
import math
import os
import re

from common.data.json_file import read_json_object

from .core import Entry, Prepared, PrepareError, Progress, Split, find_root, require_file, warn

OFFICIAL = {"train.json": 2686843, "train_mini.json": 500000, "val.json": 100000}
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


def load_json(path):
    require_file(path, "iNat21 annotation json")
    return read_json_object(path, ("images", "annotations", "categories"), PrepareError, "iNat21 annotation json")


def _field(obj, key, path, what):
    if not isinstance(obj, dict) or key not in obj:
        raise PrepareError(f"{path}: {what} without '{key}': {str(obj)[:200]}")
    return obj[key]


def _coord(value, limit):
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or abs(v) > limit:
        return None
    return v


def format_date(value):
    """'YYYY-MM-DD...' -> 'YYYY-MM-DD' (a real calendar date), else None."""
    if not isinstance(value, str):
        return None
    m = _DATE.match(value.strip())
    if not m:
        return None
    try:
        return datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3))).isoformat()
    except ValueError:
        return None


def metadata(img):
    """['lat', 'lon', 'YYYY-MM-DD'] with 'nan' for each missing field, and how many fields were present but bad."""
    lat = _coord(img.get("latitude"), 90.0)
    lon = _coord(img.get("longitude"), 180.0)
    date = format_date(img.get("date"))
    bad = 0
    for raw, parsed in ((img.get("latitude"), lat), (img.get("longitude"), lon), (img.get("date"), date)):
        present = raw not in (None, "") and not (isinstance(raw, float) and math.isnan(raw))
        bad += present and parsed is None
    cols = [repr(lat) if lat is not None else "nan", repr(lon) if lon is not None else "nan", date or "nan"]
    return cols, bad


def _categories(data, path):
    names = {}
    for cat in data["categories"]:
        cid = _field(cat, "id", path, "category")
        name = _field(cat, "name", path, f"category {cid}")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise PrepareError(f"{path}: category id {cid!r} is not an integer")
        if cid in names:
            raise PrepareError(f"{path}: category id {cid} is listed twice")
        names[cid] = str(name)
    ids = sorted(names)
    if ids != list(range(len(ids))):
        raise PrepareError(f"{path}: category ids must be 0..{len(ids) - 1}, got {ids[:5]}"
                           f"{' ...' if len(ids) > 5 else ''}")
    return [names[i] for i in ids]


def _entries(root, data, path, num_classes):
    labels = {}
    for ann in data["annotations"]:
        img_id = _field(ann, "image_id", path, "annotation")
        cid = _field(ann, "category_id", path, "annotation")
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < num_classes:
            raise PrepareError(f"{path}: annotation {ann.get('id')} (image {img_id}) has category_id {cid!r}, "
                               f"not a category id 0..{num_classes - 1}")
        if img_id in labels and labels[img_id] != cid:
            raise PrepareError(f"{path}: image {img_id} has two different categories ({labels[img_id]}, {cid})")
        labels[img_id] = cid
    entries, bad, seen = [], 0, set()
    progress = Progress(f"reading {os.path.basename(path)}", len(data["images"]))
    for img in data["images"]:
        img_id = _field(img, "id", path, "image")
        fname = _field(img, "file_name", path, f"image {img_id}")
        if img_id in seen:
            raise PrepareError(f"{path}: image id {img_id} is listed twice")
        seen.add(img_id)
        if img_id not in labels:
            raise PrepareError(f"{path}: image {img_id} ({fname}) has no annotation")
        cols, n_bad = metadata(img)
        bad += n_bad
        entries.append(Entry(os.path.join(root, fname), labels[img_id], cols, f"{path}: image {img_id}"))
        progress.step()
    unknown = set(labels) - seen
    if unknown:
        raise PrepareError(f"{path}: {len(unknown)} annotation(s) refer to images that are not listed, e.g. image "
                           f"id {sorted(unknown, key=str)[0]}")
    if bad:
        warn(f"{path}: {bad} latitude/longitude/date value(s) could not be read and are written as nan")
    return entries


def read_inat(src, opts, train_json):
    subdirs = ("inat21", "iNat2021", "inat2021")
    root = find_root(src, train_json, subdirs)
    if root == src:
        root = find_root(src, "val.json", subdirs)
    train_path = os.path.join(root, train_json)
    val_path = os.path.join(root, "val.json")
    train = load_json(train_path)
    classes = _categories(train, train_path)
    train_entries = _entries(root, train, train_path, len(classes))
    del train
    val = load_json(val_path)
    val_classes = _categories(val, val_path)
    if val_classes != classes:
        raise PrepareError(f"{val_path}: its categories differ from those of {train_path}")
    val_entries = _entries(root, val, val_path, len(classes))
    splits = [Split("train_list.txt", train_entries, OFFICIAL[train_json], f"{train_json}"),
              Split("val_list.txt", val_entries, OFFICIAL["val.json"], "val.json")]
    notes = ["list columns: path label latitude longitude date (nan where missing)"]
    return Prepared(classes, splits, official_classes=10000, notes=notes)


def read_inat21(src, opts):
    return read_inat(src, opts, "train.json")


def read_inat21_mini(src, opts):
    return read_inat(src, opts, "train_mini.json")
