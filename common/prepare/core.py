"""What every data set shares: the prepared result, validation, and writing the list files.

A reader (one per data set) turns an official download into a `Prepared`: class names in label order and splits of
`Entry(path, label, extra)` with absolute image paths. `write_prepared` then checks and writes it:

* every listed image exists (up to 20 missing ones are shown with the count; `skip_missing` drops them instead);
* labels are contiguous 0..C-1 with one name per class;
* split sizes are printed and compared with the official counts where they are known (a WARNING line, never a
  failure: miniature or partial copies differ on purpose);
* list lines are `path label [extra ...]`, the path relative to DST (os.path.relpath from the real DST folder), so
  `os.path.join(DST, path)` finds the image wherever SRC lies on the same file system. A path with whitespace cannot
  be written in this format: `link=True` writes a symlink tree under DST/images with whitespace replaced by '_' and
  lists those links instead;
* files are written through a temp file + os.replace, so a run never leaves half a file and two runs give
  byte-identical outputs. Nothing is ever written under SRC.
"""
import json
import os
import re
import sys

from common.data.datasets import IMG_EXTENSIONS, DataError, read_class_names
from common.outdir import atomic_write_text

PROGRESS_EVERY = 50000


class PrepareError(DataError):
    """The download is not in the expected shape; the message names the file (and line) at fault."""


class Entry:
    __slots__ = ("path", "label", "extra", "origin")

    def __init__(self, path, label, extra=(), origin=""):
        self.path = path            # absolute path of the image in SRC
        self.label = int(label)
        self.extra = tuple(extra)   # extra list columns (strings without whitespace)
        self.origin = origin        # where the entry comes from, for messages ('file:line')


class Split:
    def __init__(self, filename, entries, official=None, note=""):
        self.filename = filename    # e.g. 'train_list.txt'
        self.entries = entries
        self.official = official    # official number of images, when known
        self.note = note            # what the split holds, printed in the summary


class Prepared:
    def __init__(self, classes, splits, official_classes=None, extra_files=None, notes=()):
        self.classes = list(classes)
        self.splits = list(splits)
        self.official_classes = official_classes
        self.extra_files = dict(extra_files or {})   # file name -> list of lines
        self.notes = list(notes)


# ----------------------------------------------------------------------------------------------------- messages
def warn(msg):
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def info(msg):
    print(msg, flush=True)


class Progress:
    """A counter line on stderr every `every` items, for sets large enough to need it."""

    def __init__(self, what, total=None, every=None):
        self.what, self.total, self.count = what, total, 0
        self.every = every or PROGRESS_EVERY

    def step(self, n=1):
        before = self.count
        self.count += n
        if self.count // self.every != before // self.every:
            total = f"/{self.total}" if self.total else ""
            print(f"  {self.what}: {self.count}{total}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ reading the sources
def require_file(path, what=""):
    if not os.path.isfile(path):
        hint = f" ({what})" if what else ""
        raise PrepareError(f"missing metadata file: {path}{hint}")
    return path


def require_dir(path, what=""):
    if not os.path.isdir(path):
        hint = f" ({what})" if what else ""
        raise PrepareError(f"missing folder: {path}{hint}")
    return path


def find_root(src, marker, subdirs=()):
    """SRC itself when it holds `marker`, else the first of SRC/<subdir> that does (a download's top folder)."""
    for cand in (src, *(os.path.join(src, s) for s in subdirs)):
        if os.path.exists(os.path.join(cand, marker)):
            return cand
    return src


def find_file(names, folders):
    """The first existing folder/name, or None."""
    for folder in folders:
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def read_rows(path, min_cols, what="", maxsplit=-1):
    """(origin 'file:line', fields) per non-blank line of a whitespace-separated text file."""
    require_file(path, what)
    rows = []
    with open(path, "r", encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(None, maxsplit) if maxsplit >= 0 else line.split()
            if len(parts) < min_cols:
                raise PrepareError(f"{path}:{lineno}: expected at least {min_cols} fields, got '{line}'")
            rows.append((f"{path}:{lineno}", parts))
    return rows


def loadmat(path):
    """A MATLAB .mat annotation file (ImageNet's devkit, Stanford Cars) through scipy, which only data preparation
    needs (requirements-prepare.txt)."""
    try:
        import scipy.io
    except ImportError:
        raise PrepareError(f"{path}: reading .mat files needs scipy: pip install -r requirements-prepare.txt"
                           ) from None
    try:
        return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=True)
    except Exception as e:   # scipy raises several types for a damaged file
        raise PrepareError(f"{path}: cannot read the .mat file: {e}") from None


def parse_int(text, origin, what="id"):
    try:
        return int(text)
    except ValueError:
        raise PrepareError(f"{origin}: {what} '{text}' is not an integer") from None


def is_image(name):
    return name.lower().endswith(IMG_EXTENSIONS)


def sorted_subdirs(folder):
    return sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith("."))


def images_under(folder, recursive=True):
    """Sorted absolute paths of the image files in `folder` (and its sub-folders)."""
    found = []
    if recursive:
        for dirpath, dirnames, files in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in files if is_image(f) and not f.startswith("."))
    else:
        found = [e.path for e in os.scandir(folder) if e.is_file() and is_image(e.name) and not e.name.startswith(".")]
    return sorted(found)


def scan_tree(root, classes, what, index=None):
    """Entries of a class-per-folder tree. `index` maps folder name -> label (default: position in `classes`);
    a folder that is not a known class is an error."""
    index = index if index is not None else {c: i for i, c in enumerate(classes)}
    progress = Progress(f"scanning {what}")
    entries = []
    for name in sorted_subdirs(root):
        if name not in index:
            raise PrepareError(f"{os.path.join(root, name)}: class folder '{name}' of {what} is not a class of the "
                               f"training split ({len(index)} classes)")
        files = images_under(os.path.join(root, name))
        entries.extend(Entry(p, index[name], (), os.path.join(root, name)) for p in files)
        progress.step(len(files))
    return entries


# ------------------------------------------------------------------------------------------------- validation
def _check_classes(prep):
    if not prep.classes:
        raise PrepareError("no classes found")
    names = []
    for i, name in enumerate(prep.classes):
        clean = " ".join(str(name).split())
        if not clean:
            raise PrepareError(f"class {i} has an empty name")
        names.append(clean)
    prep.classes = names
    num = len(names)
    for split in prep.splits:
        for e in split.entries:
            if not 0 <= e.label < num:
                raise PrepareError(f"{e.origin}: label {e.label} is outside 0..{num - 1} "
                                   f"(class ids must be contiguous)")
            for x in e.extra:
                if not x or any(c.isspace() for c in x):
                    raise PrepareError(f"{e.origin}: extra column '{x}' is empty or holds whitespace")


def _check_missing(split, skip_missing):
    progress = Progress(f"checking {split.filename}", len(split.entries))
    missing = []
    for e in split.entries:
        if not os.path.isfile(e.path):
            missing.append(e)
        progress.step()
    if not missing:
        return
    shown = "\n  ".join(f"{e.path}" + (f"  (listed at {e.origin})" if e.origin else "") for e in missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    msg = f"{len(missing)} of {len(split.entries)} images listed for {split.filename} do not exist:\n  {shown}{more}"
    if not skip_missing:
        raise PrepareError(msg + "\n(rerun with --skip-missing to leave them out)")
    warn(msg + "\nthey are left out (--skip-missing)")
    gone = set(id(e) for e in missing)
    split.entries = [e for e in split.entries if id(e) not in gone]


# ---------------------------------------------------------------------------------------------------- writing
def _class_lines(names):
    """One name per line; if a name would read back as 'label name' (first word all digits), every line gets its
    label in front, which `read_class_names` also understands."""
    def ambiguous(n):
        head, _, rest = n.partition(" ")
        return head.isdigit() and bool(rest.strip())
    if any(ambiguous(n) for n in names):
        return [f"{i} {n}" for i, n in enumerate(names)]
    return list(names)


class _RelPaths:
    """Image path -> list path relative to the real DST folder (directory realpaths cached)."""

    def __init__(self, dst):
        self.dst = os.path.realpath(dst)
        self.cache = {}

    def __call__(self, path):
        folder, name = os.path.split(path)
        real = self.cache.get(folder)
        if real is None:
            real = self.cache[folder] = os.path.realpath(folder)
        full = os.path.join(real, name)
        try:
            rel = os.path.relpath(full, self.dst)
        except ValueError:   # another drive (Windows): only an absolute path works
            rel = full
        return rel.replace(os.sep, "/")


def _make_links(prep, src, dst):
    """Symlinks DST/images/<path in SRC, whitespace -> '_'> -> the image; returns image path -> list path."""
    targets = {}
    mapping = {}
    for split in prep.splits:
        for e in split.entries:
            if e.path in mapping:
                continue
            rel = os.path.relpath(e.path, src)
            if rel.startswith(".."):
                rel = e.path.lstrip("/\\")
            safe = re.sub(r"\s+", "_", rel.replace(os.sep, "/"))
            other = targets.get(safe)
            if other is not None and other != e.path:
                raise PrepareError(f"--link: '{e.path}' and '{other}' both become images/{safe}")
            targets[safe] = e.path
            mapping[e.path] = "images/" + safe
    progress = Progress("linking", len(targets))
    for safe, target in sorted(targets.items()):
        link = os.path.join(dst, "images", *safe.split("/"))
        target = os.path.abspath(target)
        if os.path.islink(link):
            if os.readlink(link) == target:
                progress.step()
                continue
        elif os.path.exists(link):
            raise PrepareError(f"--link: {link} exists and is not a symlink; remove it or use another --dst")
        os.makedirs(os.path.dirname(link), exist_ok=True)
        tmp = f"{link}.tmp{os.getpid()}"
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        progress.step()
    return mapping


def check_dst(src, dst):
    rs, rd = os.path.realpath(src), os.path.realpath(dst)
    if rd == rs or rd.startswith(rs.rstrip(os.sep) + os.sep):
        raise PrepareError(f"--dst {dst} is inside --src {src}: the source tree is never written to; "
                           f"choose a folder outside it")


def write_prepared(prep, src, dst, dataset, options, skip_missing=False, link=False):
    _check_classes(prep)
    for split in prep.splits:
        _check_missing(split, skip_missing)
        if not split.entries:
            raise PrepareError(f"{split.filename}: no images")
    num = len(prep.classes)
    seen = set()
    for split in prep.splits:
        if split.filename == "train_list.txt":
            seen.update(e.label for e in split.entries)
    if seen and len(seen) < num:
        empty = [prep.classes[i] for i in range(num) if i not in seen]
        warn(f"{len(empty)} of {num} classes have no training image: {', '.join(empty[:10])}"
             + (" ..." if len(empty) > 10 else ""))

    os.makedirs(dst, exist_ok=True)
    if link:
        mapping = _make_links(prep, src, dst)
        to_list = mapping.__getitem__
    else:
        to_list = _RelPaths(dst)
    bad = []
    texts = {}
    for split in prep.splits:
        lines = []
        for e in split.entries:
            rel = to_list(e.path)
            if any(c.isspace() for c in rel):
                bad.append(rel)
                continue
            lines.append(" ".join((rel, str(e.label), *e.extra)))
        texts[split.filename] = "\n".join(lines) + "\n"
    if bad:
        raise PrepareError(f"{len(bad)} image path(s) contain whitespace, which the list format "
                           f"('path label ...') cannot hold, e.g. '{bad[0]}'. Rerun with --link to list symlinks "
                           f"under {os.path.join(dst, 'images')} with safe names instead")
    for name, text in texts.items():
        atomic_write_text(os.path.join(dst, name), text)
    class_path = os.path.join(dst, "classes.txt")
    atomic_write_text(class_path, "\n".join(_class_lines(prep.classes)) + "\n")
    if read_class_names(class_path) != prep.classes:   # the engine must read back exactly these names
        raise PrepareError(f"{class_path}: class names do not read back as written")
    for name, lines in prep.extra_files.items():
        atomic_write_text(os.path.join(dst, name), "\n".join(lines) + "\n")
    summary = {"dataset": dataset, "num_classes": num, "options": dict(options, link=link, skip_missing=skip_missing),
               "splits": {s.filename: len(s.entries) for s in prep.splits}}
    atomic_write_text(os.path.join(dst, "prepare_info.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _report(prep, dst, dataset)
    return summary


def _report(prep, dst, dataset):
    num = len(prep.classes)
    info(f"{dataset}: {num} classes -> {dst}")
    if prep.official_classes is not None and prep.official_classes != num:
        warn(f"{dataset}: {num} classes, the official data set has {prep.official_classes}")
    for split in prep.splits:
        n = len(split.entries)
        official = f" (official {split.official})" if split.official is not None else ""
        note = f"  {split.note}" if split.note else ""
        info(f"  {split.filename}: {n} images{official}{note}")
        if split.official is not None and split.official != n:
            warn(f"{dataset} {split.filename}: {n} images, the official split has {split.official}")
    for note in prep.notes:
        info(f"  {note}")
    info(f"  train with: -data_path {dst} -opts MODEL.NUM_CLASSES {num}")
