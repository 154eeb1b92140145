"""What a person reads after an evaluation or a training run, written once for every method:

* `Progress`: "eval 320/50000 images, 85.3 img/s, eta 0:09:40" every N batches and a last line at the end.
* `ClassCounts` (filled by `common.engine.trainer.evaluate`, or from predictions) and `write_class_report`:
  `per_class_accuracy.csv` (class, name, images, correct, top1 %, the class it is most often mistaken for),
  `confusion_matrix.csv` (counts, rows = true class, columns = predicted class, in class-index order, no header)
  and `confusion_matrix.png` (row-normalised, every class name on both axes, sized to stay legible at 200 classes).
* `write_metrics_csv`, `plot_training_curves`, `training_summary`: the end of a training run.

Plots use matplotlib's object API (no pyplot state, no display needed); every file is written atomically.
"""
import csv
import io
import math
import os
import time

import numpy as np

from common.outdir import atomic_write, atomic_write_text

# A dense [C, C] matrix (all-reduced over ranks, written as CSV) up to this many classes; above it (iNat21: 10 000
# classes would be 800 MB per rank) only the per-class images / correct vectors are gathered.
CONFUSION_MAX_CLASSES = 1000
# class names on the PNG's axes up to this many classes (0.16 inch each); above it the matrix is drawn unlabelled
NAMED_MAX_CLASSES = 300

PER_CLASS_CSV = "per_class_accuracy.csv"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "training_curves.png"


def format_duration(seconds):
    s = int(max(0.0, seconds) + 0.5) if math.isfinite(seconds) else 0
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Images done of `total`, throughput and ETA, written every `every` batches and at `end()`. `scale`: how many
    images of the whole job one image of this process stands for (the ranks of an evaluation share the work evenly,
    so rank 0 reports for all without a collective per report)."""

    def __init__(self, what, total, write, every=20, scale=1):
        self.what, self.total, self.write = what, int(total), write
        self.every, self.scale = max(1, int(every)), max(1, int(scale))
        self.start = time.time()
        self.batches, self.local = 0, 0

    def _line(self, done, final=False):
        elapsed = time.time() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        tail = (f"{format_duration(elapsed)} in all" if final else
                f"eta {format_duration((self.total - done) / rate) if rate > 0 else '?'}")
        return f"{self.what} {done}/{self.total} images, {rate:.1f} img/s, {tail}"

    def step(self, n):
        self.batches += 1
        self.local += int(n)
        if self.batches % self.every == 0:
            self.write(self._line(min(self.local * self.scale, self.total)))

    def end(self, done=None):
        self.write(self._line(self.local * self.scale if done is None else int(done), final=True))


# ------------------------------------------------------------------------------------------------ per class
def confusion_matrix(labels, predictions, num_classes):
    """Counts [true class, predicted class] over the samples with a label (>= 0)."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    keep = labels >= 0
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels[keep], predictions[keep]), 1)
    return cm


class ClassCounts:
    """Per-class images and top-1 hits of one head; the [true, predicted] matrix too up to CONFUSION_MAX_CLASSES.
    Exact integers; `vector()` / `from_vector()` carry them through a float64 all-reduce (exact below 2**53)."""

    def __init__(self, num_classes):
        self.num_classes = int(num_classes)
        self.images = np.zeros(self.num_classes, dtype=np.int64)
        self.correct = np.zeros(self.num_classes, dtype=np.int64)
        self.confusion = (np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
                          if self.num_classes <= CONFUSION_MAX_CLASSES else None)

    def add(self, labels, predictions):
        """Labelled rows only (label >= 0)."""
        labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
        keep = labels >= 0
        labels, predictions = labels[keep], predictions[keep]
        if labels.size and max(int(labels.max()), int(predictions.max())) >= self.num_classes:
            from common.data.datasets import DataError
            raise DataError(f"label {int(labels.max())} or prediction {int(predictions.max())} is outside "
                            f"0..{self.num_classes - 1} (MODEL.NUM_CLASSES {self.num_classes})")
        if self.confusion is not None:
            np.add.at(self.confusion, (labels, predictions), 1)
        np.add.at(self.images, labels, 1)
        np.add.at(self.correct, labels[labels == predictions], 1)
        return self

    @property
    def count(self):
        return int(self.images.sum())

    def vector(self):
        return np.concatenate([self.images, self.correct] +
                              ([self.confusion.reshape(-1)] if self.confusion is not None else [])).astype(np.float64)

    @classmethod
    def from_vector(cls, num_classes, vec):
        out = cls(num_classes)
        c = out.num_classes
        vec = np.rint(np.asarray(vec, dtype=np.float64)).astype(np.int64)
        out.images, out.correct = vec[:c].copy(), vec[c:2 * c].copy()
        if out.confusion is not None:
            out.confusion = vec[2 * c:].reshape(c, c).copy()
        return out

    def vector_size(self):
        return 2 * self.num_classes + (self.num_classes ** 2 if self.confusion is not None else 0)


def _mistaken_for(cm, names):
    """Per true class: (the wrong class it is predicted as most often, how often), or ('', 0)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    out = []
    for row in off:
        j = int(row.argmax())
        out.append((names[j] if names else str(j), int(row[j])) if row[j] > 0 else ("", 0))
    return out


def per_class_csv_text(counts, names=None):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "name", "images", "correct", "top1", "most_mistaken_for", "mistaken_count"])
    mistaken = _mistaken_for(counts.confusion, names) if counts.confusion is not None else None
    for c in range(counts.num_classes):
        n, k = int(counts.images[c]), int(counts.correct[c])
        wrong = mistaken[c] if mistaken else ("", "")
        w.writerow([c, names[c] if names else "", n, k, f"{100.0 * k / n:.2f}" if n else "", *wrong])
    return buf.getvalue()


def confusion_csv_text(cm):
    return "".join(",".join(str(int(v)) for v in row) + "\n" for row in cm)


def plot_confusion_matrix(cm, names, path, title=""):
    """Row-normalised matrix with every class name on both axes; the figure grows with the class count (about
    0.16 inch per class at 100 dpi) so that 200 names stay legible; cells are annotated with counts up to 30
    classes. Above NAMED_MAX_CLASSES classes the matrix is drawn at a fixed size without names."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    n = cm.shape[0]
    names = list(names) if names else [str(i) for i in range(n)]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    named = n <= NAMED_MAX_CLASSES
    side = max(6.0, 0.16 * n + 2.5) if named else 20.0
    font = 8.64 if n > 30 else 10.0
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if named:
        ax.set_xticks(np.arange(n))
        ax.set_yticks(np.arange(n))
        ax.set_xticklabels(names, rotation=90, fontsize=font)
        ax.set_yticklabels(names, fontsize=font)
    ax.set_xlabel("predicted class" + ("" if named else " (index)"))
    ax.set_ylabel("true class" + ("" if named else " (index)"))
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="fraction of the true class")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_class_report(folder, counts, names=None, title="", log=print):
    """per_class_accuracy.csv, and with the matrix confusion_matrix.csv / .png, into `folder`; logs the mean
    per-class top-1 and the weakest classes. Returns the paths written."""
    names = list(names) if names and len(names) == counts.num_classes else None
    paths = [os.path.join(folder, PER_CLASS_CSV)]
    atomic_write_text(paths[0], per_class_csv_text(counts, names))
    if counts.confusion is not None:
        paths.append(os.path.join(folder, CONFUSION_CSV))
        atomic_write_text(paths[-1], confusion_csv_text(counts.confusion))
        paths.append(os.path.join(folder, CONFUSION_PNG))
        plot_confusion_matrix(counts.confusion, names, paths[-1], title)
    seen = counts.images > 0
    if seen.any():
        acc = 100.0 * counts.correct[seen] / counts.images[seen]
        order = np.argsort(acc, kind="stable")[:5]
        index = np.flatnonzero(seen)
        weakest = ", ".join(f"{names[index[i]] if names else index[i]} {acc[i]:.1f}%" for i in order)
        log(f"per-class top-1: mean {acc.mean():.2f}% over {int(seen.sum())} classes with images; lowest: {weakest}")
    log("wrote " + ", ".join(paths) + ("" if counts.confusion is not None else
                                        f" (no confusion matrix above {CONFUSION_MAX_CLASSES} classes)"))
    return paths


# ------------------------------------------------------------------------------------------------ training
def _scalar(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def history_columns(history):
    """Every scalar key of the history, in first-seen order ('epoch' first)."""
    cols = ["epoch"]
    for record in history:
        for k, v in record.items():
            if k not in cols and _scalar(v):
                cols.append(k)
    return cols


def metrics_csv_text(history):
    """One row per epoch, one column per scalar of the history (blank where an epoch lacks it, e.g. no val)."""
    cols = history_columns(history)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for record in history:
        w.writerow([_cell(record.get(c)) for c in cols])
    return buf.getvalue()


def _cell(v):
    if v is None or not _scalar(v):
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


def val_top1_series(history):
    """{label: (epochs, values)} for the validation top-1 of every head: 'top1' (the main head), 'layer1/top1', ...,
    with 'ema ' in front for the EMA weights."""
    series = {}
    for record in history:
        for k, v in record.items():
            if not k.startswith("val_") or not (k == "val_top1" or k.endswith("/top1") or k == "val_ema_top1"):
                continue
            label = k[4:]
            if label.startswith("ema_"):
                label = "ema " + label[4:]
            if _scalar(v) and math.isfinite(float(v)):
                epochs, values = series.setdefault(label, ([], []))
                epochs.append(record["epoch"])
                values.append(float(v))
    return series


def plot_training_curves(history, path, title=""):
    """Loss (train, and val when recorded), the learning rate (when recorded) and val top-1 per head against the
    epoch, one panel each."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def series(key):
        pts = [(r["epoch"], float(r[key])) for r in history if _scalar(r.get(key)) and math.isfinite(float(r[key]))]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = [("loss", [("train", series("train_loss")), ("val", series("val_loss"))])]
    if any("lr" in r for r in history):
        panels.append(("learning rate", [("lr", series("lr"))]))
    top1 = val_top1_series(history)
    if top1:
        panels.append(("val top-1 (%)", sorted(top1.items(), key=lambda kv: (kv[0] != "top1", kv[0]))))
    fig = Figure(figsize=(5.0 * len(panels), 4.0))
    marker = "o" if len(history) <= 30 else None
    for i, (name, lines) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for label, (x, y) in lines:
            if x:
                ax.plot(x, y, marker=marker, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        elif sum(1 for _, (x, _) in lines if x) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def training_summary(history, epochs_total, main_head="top1", out_dir=""):
    """The log's end-of-run table: epochs, wall time, images/s, best and last val top-1 of every head."""
    done = [r for r in history if "epoch" in r]
    train_time = sum(float(r.get("epoch_time", 0.0)) for r in done)
    wall = sum(float(r.get("wall_time", r.get("epoch_time", 0.0))) for r in done)
    images = sum(float(r["images_per_s"]) * float(r.get("epoch_time", 0.0)) for r in done if "images_per_s" in r)
    timed = sum(float(r.get("epoch_time", 0.0)) for r in done if "images_per_s" in r)
    last_epoch = done[-1]["epoch"] if done else 0
    lines = [f"summary of the run{' in ' + out_dir if out_dir else ''}: {last_epoch} of {epochs_total} epochs, "
             f"wall time {format_duration(wall)} (training {format_duration(train_time)}"
             + (f", {images / timed:.1f} images/s" if timed > 0 else "") + ")"]
    top1 = val_top1_series(history)
    if not top1:
        lines.append("  no validation top-1 recorded")
        return "\n".join(lines)
    rows = []
    for label, (epochs, values) in top1.items():
        ema = label.startswith("ema ")
        base = label[4:] if ema else label
        main = main_head if main_head == "main" else f"{main_head} (main)"
        name = ("ema " if ema else "") + (main if base == "top1" else base[:-len("/top1")])
        best = int(np.argmax(values))
        rows.append(((ema, base != "top1", base), name, f"{values[best]:.2f} ({epochs[best]})",
                     f"{values[-1]:.2f} ({epochs[-1]})"))
    width = max(len(r[1]) for r in rows) + 2
    lines.append(f"  {'head':<{width}}{'best top1 (epoch)':<20}last top1 (epoch)")
    for _, name, best, last in sorted(rows):
        lines.append(f"  {name:<{width}}{best:<20}{last}")
    return "\n".join(lines)
