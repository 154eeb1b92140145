"""The iNaturalist 2021 annotation files as published (``train_mini.json``, ``train.json``, ``val.json``).

COCO-style: ``images`` = [{id, file_name, latitude, longitude, date, ...}], ``annotations`` = [{image_id,
category_id, ...}]. Images and labels are joined on ``image_id`` (not on list position, which the files do not
promise), paths are ``<root>/<file_name>``, labels are ``category_id``. Each sample carries its metadata as the
list-file columns would (``lat lon YYYY-MM-DD``, ``nan`` when missing), so the same encoder serves both layouts.

Every problem is a DataError naming the file and the image: invalid JSON, a missing field, an image without a label
(or with two), a label for an unknown image, a category outside [0, MODEL.NUM_CLASSES), a date that does not parse.
"""
import os

from common.data.datasets import DataError, Sample
from common.data.json_file import read_json_object
from dynamic_mlp.metadata import parse_coordinate, parse_date


def _load(path):
    return read_json_object(path, ("images", "annotations"))


def _field(entry, key, path, what, index):
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {what}[{index}] is not an object")
    if key not in entry:
        raise DataError(f"{path}: {what}[{index}] has no '{key}'")
    return entry[key]


def read_inat_json(path, root, num_classes=None):
    """Samples (in the order of `images`) with extra = (lat, lon, date) strings, 'nan' for missing values."""
    data = _load(path)
    labels = {}
    for i, ann in enumerate(data["annotations"]):
        image_id = _field(ann, "image_id", path, "annotations", i)
        category = _field(ann, "category_id", path, "annotations", i)
        if isinstance(category, bool) or not isinstance(category, int):
            raise DataError(f"{path}: annotations[{i}] (image {image_id}): category_id {category!r} is not an "
                            f"integer")
        if category < 0 or (num_classes is not None and category >= num_classes):
            raise DataError(f"{path}: annotations[{i}] (image {image_id}): category_id {category} is out of range "
                            f"[0, {num_classes}) (MODEL.NUM_CLASSES is {num_classes})")
        if image_id in labels:
            raise DataError(f"{path}: image {image_id} has more than one annotation")
        labels[image_id] = category
    samples = []
    seen = set()
    for i, img in enumerate(data["images"]):
        image_id = _field(img, "id", path, "images", i)
        file_name = _field(img, "file_name", path, "images", i)
        origin = f"{path}: image {image_id} ({file_name})"
        if image_id in seen:
            raise DataError(f"{origin}: the image id is listed twice")
        seen.add(image_id)
        if image_id not in labels:
            raise DataError(f"{origin}: no annotation has image_id {image_id}")
        try:
            lat = parse_coordinate(img.get("latitude"), "latitude", 90.0)
            lon = parse_coordinate(img.get("longitude"), "longitude", 180.0)
            date = parse_date(img.get("date"))
        except ValueError as e:
            raise DataError(f"{origin}: {e}") from None
        extra = ("nan" if lat is None else repr(lat), "nan" if lon is None else repr(lon),
                 "nan" if date is None else date.isoformat())
        samples.append(Sample(os.path.join(root, file_name), labels[image_id], extra, origin))
    unknown = [k for k in labels if k not in seen]
    if unknown:
        shown = ", ".join(str(k) for k in unknown[:10]) + (f", ... ({len(unknown) - 10} more)"
                                                           if len(unknown) > 10 else "")
        raise DataError(f"{path}: {len(unknown)} annotation(s) refer to images that are not in 'images': {shown}")
    if not samples:
        raise DataError(f"{path}: no images listed")
    return samples
