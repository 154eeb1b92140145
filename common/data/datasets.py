"""Image data sets: list files (`relative/path label [extra columns...]`) and class-per-folder trees.

Every sample is read as 8-bit RGB with its real range (`load_rgb`): 16-bit and 32-bit integer images are scaled by
their type's range, float images from [0, 1] (or min-max), instead of being clipped to white or black. Problems are
reported with the file and line they come from: a malformed or non-UTF-8 line, a label outside [0, num_classes),
a path with whitespace, a listed image that does not exist, an image that cannot be decoded or that declares more
pixels than PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`).

List files: UTF-8 (a leading byte-order mark is ignored); columns are separated by whitespace, so a path cannot
contain any (`python -m common.prepare DATASET --src SRC --dst DST --link` lists symlinks with '_' instead).
A path is joined to the data root with `os.path.join`: it may also be absolute or leave the root with `..`
(e.g. a list that points into a shared image store); both are allowed on purpose.

Class folders: `<split>/<class>/**/<image>`; names starting with '.' (`.ipynb_checkpoints`, `._x.jpg`) are ignored.
The class list is `classes.txt` when there is one, else the sorted class folders of the training split, and every
split must have exactly those class folders, each with at least one image: labels then agree by class name.
"""
import os
import random
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.errors import SuiteError
from common.logger import get_logger

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
logger = get_logger(__name__)


class DataError(SuiteError, ValueError):
    """Bad input data, with a message that says which file (and line) is at fault."""


class Sample:
    __slots__ = ("path", "label", "extra", "origin")

    def __init__(self, path, label, extra=(), origin=""):
        self.path = path
        self.label = label
        self.extra = tuple(extra)   # extra list-file columns as strings (e.g. latitude longitude date)
        self.origin = origin        # 'file:line' for error messages


def _utf8_error(path, error):
    """DataError for a text file that is not UTF-8, naming the line of the first bad byte."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = len((data[:e.start] + b"x").splitlines())
        start = max(data.rfind(b"\n", 0, e.start), data.rfind(b"\r", 0, e.start)) + 1
        column = e.start - start + 1
        hint = (" (it looks like UTF-16: save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff")
                else "; save the file as UTF-8")
        return DataError(f"{path}:{lineno}: not UTF-8 text: byte 0x{data[e.start]:02x} at column {column}{hint}")
    except OSError:
        pass
    return DataError(f"{path}: not UTF-8 text: {error}")


def read_text_lines(path):
    """(line number, line without its end) for each line of a UTF-8 text file; a leading BOM is dropped.

    Bytes that are not UTF-8 raise DataError naming the file and line."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline=None) as f:
            for n, line in enumerate(f, 1):
                yield n, line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, e) from None


def _is_int(text):
    try:
        int(text)
        return True
    except ValueError:
        return False


def _whitespace_path(parts, root):
    """The path a line with whitespace in its path column probably meant, or None.

    `parts` is the split line whose second column is not an integer label: it means a path with whitespace when a
    later column is an integer label or when the first columns, joined by a space, name an existing file."""
    for k in range(2, len(parts)):
        joined = " ".join(parts[:k])
        if _is_int(parts[k]) or os.path.exists(os.path.join(root, joined)):
            return joined
    return None


WHITESPACE_HINT = ("list files separate columns by whitespace, so a path cannot contain any: rename the files, or "
                   "write the lists with `python -m common.prepare DATASET --src SRC --dst DST --link`, which lists "
                   "symlinks under DST/images with '_' in place of whitespace")


def read_list_file(list_path, root, num_classes=None):
    """Parse `relative/path label [extra ...]` lines; blank lines and lines starting with '#' are skipped.

    The file is UTF-8 (a BOM is dropped). Paths are joined to `root`; absolute paths and paths with '..' are allowed
    (they may point outside the data root)."""
    if not os.path.isfile(list_path):
        raise DataError(f"list file not found: {list_path}")
    samples = []
    for lineno, line in read_text_lines(list_path):
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
            meant = _whitespace_path(parts, root)
            if meant is not None:
                raise DataError(f"{origin}: the image path '{meant}' contains whitespace; {WHITESPACE_HINT}") from None
            raise DataError(f"{origin}: label '{parts[1]}' is not an integer") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise DataError(f"{origin}: label {label} is out of range [0, {num_classes}) "
                            f"(MODEL.NUM_CLASSES is {num_classes})")
        samples.append(Sample(os.path.join(root, parts[0]), label, parts[2:], origin))
    if not samples:
        raise DataError(f"{list_path}: no samples listed")
    return samples


def _hidden(name):
    return name.startswith(".")


def class_folder_names(root):
    """Sorted names of the class folders under `root` (hidden ones left out)."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and not _hidden(d.name))


def _images_under(folder):
    found = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        found += [(dirpath, f) for f in files if not _hidden(f) and f.lower().endswith(IMG_EXTENSIONS)]
    return [os.path.join(d, f) for d, f in sorted(found)]


def _names(items, limit=10):
    items = list(items)
    shown = ", ".join(f"'{x}'" for x in items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def scan_class_folders(root, class_names=None, source=None):
    """A class-per-folder tree: `root/<class>/**/<image>`, labels in the order of `class_names`.

    Without `class_names` the sorted (non-hidden) sub-folder names are the classes. With them, the folders must be
    exactly those classes: a folder that is not a class, a class without a folder, or a class folder without images
    is a DataError. `source` says where the class list comes from, for the messages (e.g. 'train/' or 'classes.txt').
    """
    folders = class_folder_names(root)
    if class_names is None:
        classes = folders
        if not classes:
            raise DataError(f"{root}: no class folders (expected {root}/<class name>/<images>)")
    else:
        classes = list(class_names)
        source = source or "the class list"
        extra = [f for f in folders if f not in set(classes)]
        missing = [c for c in classes if c not in set(folders)]
        problems = []
        if extra:
            problems.append(f"class folder(s) {_names(extra)} are not classes of {source}")
        if missing:
            problems.append(f"class(es) {_names(missing)} of {source} have no folder here")
        if problems:
            raise DataError(f"{root}: the class folders do not match {source} by name: {'; '.join(problems)} "
                            f"(labels are given by class name, so every split needs exactly the same class folders)")
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        images = _images_under(folder)
        if not images:
            raise DataError(f"class folder {folder} has no images (extensions: {' '.join(IMG_EXTENSIONS)})")
        samples += [Sample(path, label, (), folder) for path in images]
    return samples, classes


def _missing_hint(sample):
    """A hint when the path goes on into the next columns (a list path with whitespace whose second word was read
    as the label): the file named by the joined columns exists."""
    columns = (str(sample.label), *sample.extra)
    for k in range(1, len(columns) + 1):
        candidate = " ".join((sample.path, *columns[:k]))
        if os.path.isfile(candidate):
            return f" (the file '{candidate}' exists: its path contains whitespace; {WHITESPACE_HINT})"
    return ""


def check_files_exist(samples, what):
    missing = [s for s in samples if not os.path.isfile(s.path)]
    if missing:
        shown = "\n  ".join(f"{s.origin}: {s.path}{_missing_hint(s)}" for s in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{len(missing)} image(s) listed for {what} do not exist:\n  {shown}{more}")


_SIXTEEN_BIT = 65535


def _to_uint8(values):
    return np.clip(np.rint(values), 0, 255).astype("uint8")


def _min_max(arr):
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        return _to_uint8(np.full(arr.shape, lo))
    return _to_uint8((arr.astype("float64") - lo) * (255.0 / (hi - lo)))


def to_rgb(img):
    """Any PIL image -> 8-bit RGB with its real range (`Image.convert('RGB')` clips 16-bit and float images).

    Integer modes I;16* scale by the 16-bit range (value >> 8); 'I' (32-bit) does the same when its values lie in
    [0, 65535] and is stretched min-max otherwise. 'F' (float): values in [0, 1] are multiplied by 255, others
    stretched min-max; NaN or infinity is an error (ValueError). Every other mode converts as PIL converts it."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if mode.startswith("I;16") or (arr.size and arr.min() >= 0 and arr.max() <= _SIXTEEN_BIT):
            grey = (arr.astype("uint32") >> 8).astype("uint8")
        else:
            grey = _min_max(arr)
    elif mode == "F":
        arr = np.asarray(img, dtype="float64")
        if not np.isfinite(arr).all():
            raise ValueError("float image with NaN or infinite pixel values")
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            grey = _to_uint8(arr * 255.0)
        else:
            grey = _min_max(arr)
    else:
        return img.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(grey), "L").convert("RGB")


def load_rgb(path, origin=""):
    """Decode an image file to 8-bit RGB (`to_rgb`). A file that cannot be decoded, or that declares more pixels
    than `PIL.Image.MAX_IMAGE_PIXELS` (a decompression bomb; PIL's warning counts too), is a DataError naming it."""
    where = f" (listed at {origin})" if origin and origin != os.path.dirname(path) else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
                return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}{where}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"image {path}{where} is too large to decode safely (a possible decompression bomb): "
                        f"{e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as e:
        raise DataError(f"cannot decode image {path}{where}: {e}") from None


def sample_seed(seed, epoch, index):
    """A per-sample seed, so augmentation is reproducible whatever the worker count and after a resume."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(index) * 104_729 + 12_345) % (2 ** 32)


class ImageDataset:
    """Map-style data set of (image CHW float32, label int64[, meta float32 vector]).

    transform: PIL image -> CHW float32 array. meta_fn: extra list columns (strings) -> float32 vector, or None.
    When `train` is set, Python's and numpy's random generators are reseeded per sample from (seed, epoch, index).
    `skip_bad_images` (DATA.SKIP_BAD_IMAGES): an unreadable image is replaced by the next readable sample, with a
    warning naming it; in training the replacement keeps its own label, in evaluation it gets label -1, which the
    engine does not score (so no sample is counted twice).
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

    def _replacement(self, index, error, tries=10):
        """The next readable sample after a bad one (DATA.SKIP_BAD_IMAGES), with a warning naming the bad path."""
        use = "its replacement is trained on" if self.train else "it is left out of the metrics"
        logger.warning("%s; skipped (DATA.SKIP_BAD_IMAGES): %s", error, use)
        n = len(self.samples)
        for step in range(1, min(tries, n - 1) + 1):
            try:
                return self._read((index + step) % n)
            except DataError as e:
                logger.warning("%s; skipped (DATA.SKIP_BAD_IMAGES)", e)
        raise DataError(f"{error}; DATA.SKIP_BAD_IMAGES found no readable image among the next "
                        f"{min(tries, n - 1)} samples either") from None

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
            label = sample.label
        except DataError as e:
            if not self.skip_bad_images:
                raise
            sample, image = self._replacement(index, e)
            # training learns from the replacement with its own label; evaluation must not count it a second time,
            # so it gets label -1, which the engine leaves unscored (and reports as skipped)
            label = sample.label if self.train else -1
        label = np.int64(label)
        if self.meta_fn is None:
            return image, label
        return image, label, self.meta_fn(sample)


def read_class_names(path, num_classes=None):
    """`classes.txt`: one name per line, in label order (optionally 'label name' per line)."""
    if not path or not os.path.isfile(path):
        return None
    names = []
    for _, line in read_text_lines(path):
        if line.strip():
            head, _, rest = line.partition(" ")
            names.append(rest.strip() if head.isdigit() and rest.strip() else line.strip())
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"{path}: {len(names)} class names for MODEL.NUM_CLASSES {num_classes}")
    return names
