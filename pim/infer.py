"""PIM inference: predictions for a folder, a list file or one image -> CSV, and a confusion matrix when labels are
known.

    python pim/infer.py -cfg configs/pim/cub_swin_large_384.yaml -pretrained best.pdparams \\
        -image /data/cub/val_list.txt -data_path /data/cub -output infer_out

-image: a list file (``relative/path label``; paths relative to -data_path, or to the list's folder), a folder
(searched recursively; images inside sub-folders named like a class of classes.txt get that label), or one image.
Writes ``<output>/predictions.csv`` (path, label, prediction, probability, label_name, prediction_name; label -1
when unknown) and, with labels, ``per_class_accuracy.csv``, ``confusion_matrix.csv`` (counts, rows = true class) and
``confusion_matrix.png`` (row-normalised; class names on both axes, sized to stay readable for 200 classes): the
files of `common/report.py`, as -eval and predict.py -report write them. The prediction is the model's
main head (the combiner unless MODEL.PIM.MAIN_HEAD says otherwise); -head picks another (layer1.., sum, ...).
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

import numpy as np  # noqa: E402

from common.config import ConfigError  # noqa: E402
from common.outdir import atomic_write, check_writable  # noqa: E402
from common.errors import run_entry  # noqa: E402
from common.inference import (add_model_flags, class_names_for, collect_samples, folder_samples, load_model,  # noqa
                              predict_samples)
from common.report import ClassCounts, confusion_matrix, plot_confusion_matrix, write_class_report  # noqa: E402

__all__ = ["confusion_matrix", "plot_confusion_matrix", "folder_samples", "main"]


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
    head = args.head or method.main_head_of(model)
    if args.head:
        heads = method.head_names(model)
        if args.head not in heads:
            raise ConfigError(f"-head {args.head} is not one of {', '.join(heads)}")
    if os.path.isdir(args.image):
        samples = folder_samples(args.image, names)
    else:
        samples = collect_samples(args.image, args.data_path)
    results = predict_samples(method, model, config, samples, args.batch_size, topk=1, head=head)
    os.makedirs(args.output, exist_ok=True)
    csv_path = os.path.join(args.output, "predictions.csv")
    atomic_write(csv_path, lambda tmp: write_predictions(tmp, results, names))
    print(f"wrote {csv_path} ({len(results)} images, head '{head}')")
    labels = np.array([s.label for s, _, _ in results])
    preds = np.array([int(ids[0]) for _, ids, _ in results])
    known = labels >= 0
    if known.any():
        acc = 100.0 * float((labels[known] == preds[known]).mean())
        counts = ClassCounts(len(names)).add(labels, preds)
        write_class_report(args.output, counts, names,
                           f"{head}: top-1 {acc:.2f}% on {int(known.sum())} images", log=print)
        print(f"top-1 {acc:.2f}% on {int(known.sum())} labelled images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
