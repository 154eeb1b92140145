"""PIM inference: predictions for a folder, a list file or one image -> CSV, and a confusion matrix when labels are
known.

    python pim/infer.py -cfg configs/pim/cub_swin_large_384.yaml -pretrained best.pdparams \\
        -image /data/cub/val_list.txt -data_path /data/cub -output infer_out

-image: a list file (``relative/path label``; paths relative to -data_path, or to the list's folder), a folder
(searched recursively; images inside sub-folders named like a class of classes.txt get that label), or one image.
Writes ``<output>/predictions.csv`` (path, label, prediction, probability, label_name, prediction_name; label -1
when unknown) and, with labels, ``confusion_matrix.csv`` (counts, rows = true class) and ``confusion_matrix.png``
(row-normalised; class names on both axes, sized to stay readable for 200 classes). The prediction is the model's
main head (the combiner unless MODEL.PIM.MAIN_HEAD says otherwise); -head picks another (layer1.., sum, ...).
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

import numpy as np  # noqa: E402

from common.config import ConfigError  # noqa: E402
from common.data.datasets import IMG_EXTENSIONS, DataError, Sample  # noqa: E402
from common.outdir import check_writable  # noqa: E402
from common.errors import run_entry  # noqa: E402
from common.inference import add_model_flags, class_names_for, collect_samples, load_model, predict_samples  # noqa

__all__ = ["confusion_matrix", "plot_confusion_matrix", "folder_samples", "main"]


def folder_samples(root, names):
    """Images under `root`; those inside a sub-folder named like a class get its label, the others -1."""
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for dirpath, _, files in sorted(os.walk(root)):
        rel = os.path.relpath(dirpath, root)
        top = rel.split(os.sep)[0] if rel != "." else ""
        for f in sorted(files):
            if f.lower().endswith(IMG_EXTENSIONS):
                samples.append(Sample(os.path.join(dirpath, f), index.get(top, -1), (), root))
    if not samples:
        raise DataError(f"no images found under {root}")
    return samples


def confusion_matrix(labels, predictions, num_classes):
    """Counts [true class, predicted class] over the samples with a label (>= 0)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    keep = labels >= 0
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels[keep], predictions[keep]), 1)
    return cm


def plot_confusion_matrix(cm, names, path, title=""):
    """Row-normalised matrix with every class name on both axes; the figure grows with the class count (about
    0.16 inch per class) so that 200 names stay legible; cells are annotated with counts up to 30 classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = max(6.0, 0.16 * n + 2.5)
    font = max(5.0, min(10.0, 0.16 * 72 * 0.75)) if n > 30 else 10.0
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.set_xticklabels(names, rotation=90, fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_predictions(path, results, names):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "prediction", "probability", "label_name", "prediction_name"])
        for sample, ids, probs in results:
            label, pred = int(sample.label), int(ids[0])
            w.writerow([sample.path, label, pred, f"{float(probs[0]):.6f}", names[label] if label >= 0 else "",
                        names[pred]])


def main(argv=None):
    p = add_model_flags(argparse.ArgumentParser(description="PIM: predictions (CSV) and a confusion matrix"))
    p.add_argument("-image", required=True, help="list file, folder or image")
    p.add_argument("-output", default="pim_infer", help="output folder")
    p.add_argument("-head", default="", help="head to predict with (default: the model's main head)")
    p.add_argument("-batch_size", type=int, default=32)
    args = p.parse_args(argv)
    return run_entry(_infer, args, exit_on_error=False)


def _infer(args):
    from pim.method import PIMMethod

    check_writable(args.output)
    method = PIMMethod()
    config, model = load_model(method, args)
    names = class_names_for(config, args.data_path)
    if args.head:
        heads = model.head_names() + [f"highest-{k}" for k in method.highest]
        if args.head not in heads:
            raise ConfigError(f"-head {args.head} is not one of {', '.join(heads)}")
        method.main_head = args.head
    if os.path.isdir(args.image):
        samples = folder_samples(args.image, names)
    else:
        samples = collect_samples(args.image, args.data_path)
    results = predict_samples(method, model, config, samples, args.batch_size, topk=1)
    os.makedirs(args.output, exist_ok=True)
    csv_path = os.path.join(args.output, "predictions.csv")
    write_predictions(csv_path, results, names)
    print(f"wrote {csv_path} ({len(results)} images, head '{method.main_head}')")
    labels = np.array([s.label for s, _, _ in results])
    preds = np.array([int(ids[0]) for _, ids, _ in results])
    known = labels >= 0
    if known.any():
        acc = 100.0 * float((labels[known] == preds[known]).mean())
        cm = confusion_matrix(labels, preds, len(names))
        np.savetxt(os.path.join(args.output, "confusion_matrix.csv"), cm, fmt="%d", delimiter=",")
        png = os.path.join(args.output, "confusion_matrix.png")
        plot_confusion_matrix(cm, names, png, f"{method.main_head}: top-1 {acc:.2f}% on {int(known.sum())} images")
        print(f"top-1 {acc:.2f}% on {int(known.sum())} labelled images; wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
