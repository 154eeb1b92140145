"""Image data sets: list files (`relative/path label [extra columns...]`) and class-per-folder trees.

Every sample is read as RGB. Problems are reported with the file and line they come from: a malformed line, a label
outside [0, num_classes), a listed image that does not exist, an image that cannot be decoded.
"""
import logging
import os
import random

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.errors import SuiteError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
logger = logging.getLogger(__name__)


class DataError(SuiteError, ValueError):
    """Bad input data, with a message that says which file (and line) is at fault."""


class Sample:
    __slots__ = ("path", "label", "extra", "origin")

    def __init__(self, path, label, extra=(), origin=""):
        self.path = path
        self.label = label
        self.extra = tuple(extra)   # extra list-file columns as strings (e.g. latitude longitude date)
        self.origin = origin        # 'file:line' for error messages


def read_list_file(list_path, root, num_classes=None):
    """Parse `relative/path label [extra ...]` lines; blank lines and lines starting with '#' are skipped."""
    if not os.path.isfile(list_path):
        raise DataError(f"list file not found: {list_path}")
    samples = []
    with open(list_path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            origin = f"{list_path}:{lineno}"
            if len(parts) < 2:
                raise DataError(f"{origin}: expected 'relative/path label', got '{line}'")
            try:
                label = int(parts[1])
            except ValueError:
                raise DataError(f"{origin}: label '{parts[1]}' is not an integer") from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise DataError(f"{origin}: label {label} is out of range [0, {num_classes}) "
                                f"(MODEL.NUM_CLASSES is {num_classes})")
            samples.append(Sample(os.path.join(root, parts[0]), label, parts[2:], origin))
    if not samples:
        raise DataError(f"{list_path}: no samples listed")
    return samples


def scan_class_folders(root, class_names=None):
    """A class-per-folder tree: sorted sub-folder names are the classes (or `class_names`, in that order)."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    classes = class_names or sorted(d.name for d in os.scandir(root) if d.is_dir())
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise DataError(f"{root}: class folder '{name}' is missing")
        for dirpath, _, files in sorted(os.walk(folder)):
            for fname in sorted(files):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    samples.append(Sample(os.path.join(dirpath, fname), label, (), folder))
    if not samples:
        raise DataError(f"{root}: no images found in class folders")
    return samples, classes


def check_files_exist(samples, what):
    missing = [s for s in samples if not os.path.isfile(s.path)]
    if missing:
        shown = "\n  ".join(f"{s.origin}: {s.path}" for s in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{len(missing)} image(s) listed for {what} do not exist:\n  {shown}{more}")


def load_rgb(path, origin=""):
    where = f" (listed at {origin})" if origin and origin != os.path.dirname(path) else ""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}{where}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {path}{where}: {e}") from None


def sample_seed(seed, epoch, index):
    """A per-sample seed, so augmentation is reproducible whatever the worker count and after a resume."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(index) * 104_729 + 12_345) % (2 ** 32)


class ImageDataset:
    """Map-style data set of (image CHW float32, label int64[, meta float32 vector]).

    transform: PIL image -> CHW float32 array. meta_fn: extra list columns (strings) -> float32 vector, or None.
    When `train` is set, Python's and numpy's random generators are reseeded per sample from (seed, epoch, index).
    """

    def __init__(self, samples, transform, train=False, seed=0, meta_fn=None, skip_bad_images=False,
                 classes=None):
        self.samples = samples
        self.transform = transform
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.meta_fn = meta_fn
        self.skip_bad_images = skip_bad_images
        self.classes = classes

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.samples)

    @property
    def labels(self):
        return np.array([s.label for s in self.samples], dtype="int64")

    def _read(self, index):
        sample = self.samples[index]
        img = load_rgb(sample.path, sample.origin)
        if self.train:
            s = sample_seed(self.seed, self.epoch, index)
            random.seed(s)
            np.random.seed(s)
        return sample, self.transform(img)

    def __getitem__(self, index):
        try:
            sample, image = self._read(index)
        except DataError as e:
            if not self.skip_bad_images:
                raise
            logger.warning("%s; using another sample instead (DATA.SKIP_BAD_IMAGES)", e)
            sample, image = self._read((index + 1) % len(self.samples))
        label = np.int64(sample.label)
        if self.meta_fn is None:
            return image, label
        return image, label, self.meta_fn(sample)


def read_class_names(path, num_classes=None):
    """`classes.txt`: one name per line, in label order (optionally 'label name' per line)."""
    if not path or not os.path.isfile(path):
        return None
    names = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                head, _, rest = line.partition(" ")
                names.append(rest.strip() if head.isdigit() and rest.strip() else line.strip())
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"{path}: {len(names)} class names for MODEL.NUM_CLASSES {num_classes}")
    return names
