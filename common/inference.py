"""Prediction with a trained or ported model: `python <method>/predict.py -cfg ... -pretrained ... -image X`.

X is an image file, a folder (searched recursively) or a list file (`path label [extra columns]`, paths relative to
the list's folder or to -data_path). Prints the top-k classes with names (from classes.txt under -data_path, else
the names the checkpoint carries) and probabilities, and writes them to a CSV with -csv. Methods that take metadata
read it from the list's extra columns, or from -lat / -lon / -date for single images. -cfg may be left out for a
checkpoint of this suite: the config stored in it is used (see common/cli.py). A folder whose sub-folders are named
like the classes is labelled by them; with labels, -report DIR writes per_class_accuracy.csv and the confusion matrix
(CSV, PNG) as -eval does (common/report.py).
"""
import argparse
import os
import sys

import paddle
import paddle.nn.functional as F

from common import dist
from common.checkpoint import load_pretrained, read_checkpoint, stored_run_info
from common.cli import add_opts_flags, build_parser, config_from_args
from common.data.build import build_loader, split_batch
from common.data.datasets import DataError, ImageDataset, read_class_names
from common.data.samplers import EvalBatchSampler
# shared with python -m common.deploy (which imports no training code)
from common.deploy import collect_samples, folder_samples, print_predictions, write_csv  # noqa: F401
from common.errors import run_entry
from common.outdir import check_output_file, check_writable
from common.report import ClassCounts, Progress, write_class_report


def add_model_flags(parser):
    parser.add_argument("-cfg", type=str, default=None,
                        help="the model's yaml config (default: the config stored in the -pretrained checkpoint)")
    parser.add_argument("-pretrained", type=str, required=True,
                        help="weights (.pdparams; the extension may be left out)")
    parser.add_argument("-data_path", type=str, default=None, help="root of list-file paths and classes.txt")
    parser.add_argument("-use_ema", action="store_true", help="the checkpoint's EMA weights (EVAL.USE_EMA)")
    add_opts_flags(parser)
    return parser


def load_model(method, args):
    """Config from -cfg (or the checkpoint's stored config) and -opts / -o, model with the -pretrained weights (the
    EMA weights with -use_ema / EVAL.USE_EMA), in eval mode. Notes about the config go to stderr."""
    if paddle.device.get_device() == "cpu":
        # the cores and MKL's fast path, as the runner gives training
        print(f"cpu: {dist.set_cpu_threads()} math threads", file=sys.stderr)
    cli = build_parser().parse_args([])
    cli.cfg, cli.pretrained, cli.opts, cli.data_path = args.cfg, args.pretrained, args.opts, args.data_path
    cli.o, cli.use_ema = getattr(args, "o", None) or [], getattr(args, "use_ema", False)
    cli.eval = True
    notes = []
    config = config_from_args(cli, method.get_config(), notes=notes)
    for note in notes:
        print(note, file=sys.stderr)
    model = method.build_model(config)
    load_pretrained(model, config.MODEL.PRETRAINED, prefer_ema=config.EVAL.USE_EMA,
                    log=lambda msg: print(msg, file=sys.stderr),
                    model_name=config.MODEL.NAME, method=config.MODEL.METHOD or None)
    model.eval()
    return config, model


def class_names_for(config, data_path, fallback=True):
    """The class names, first found of: classes.txt under the -data_path flag; the names the -pretrained checkpoint
    carries (its meta: what its head was trained on); classes.txt under the config's DATA.DATA_PATH (a relative path
    stored with a checkpoint may point at another data set in this folder); the class indices (None with
    fallback=False)."""
    def from_folder(root):
        if root and config.DATA.CLASS_NAMES:
            return read_class_names(os.path.join(root, config.DATA.CLASS_NAMES), config.MODEL.NUM_CLASSES)
        return None

    def from_checkpoint():
        if config.MODEL.PRETRAINED and os.path.isfile(config.MODEL.PRETRAINED):
            _, meta = stored_run_info(read_checkpoint(config.MODEL.PRETRAINED))
            names = (meta or {}).get("class_names")
            if names and len(names) == config.MODEL.NUM_CLASSES:
                return names
        return None

    names = from_folder(data_path) or from_checkpoint() or from_folder(config.DATA.DATA_PATH)
    if names:
        return names
    return [str(i) for i in range(config.MODEL.NUM_CLASSES)] if fallback else None


@paddle.no_grad()
def predict_samples(method, model, config, samples, batch_size=32, topk=5, progress=True, head=None):
    """[(sample, top-k class ids, top-k probabilities)] using the method's eval transform and `head` (default: the
    model's main head)."""
    head = head or method.main_head_of(model)
    dataset = ImageDataset(samples, method.eval_transform(config), meta_fn=method.meta_fn(config))
    loader = build_loader(dataset, EvalBatchSampler(len(dataset), batch_size), config.DATA.NUM_WORKERS,
                          config.DATA.SHARED_MEMORY)
    k = min(topk, config.MODEL.NUM_CLASSES)
    results, done = [], 0
    report = (Progress("predict", len(samples), lambda line: print(line, file=sys.stderr, flush=True), every=10)
              if progress and len(samples) > batch_size else None)
    for batch in loader:
        images, _, extras = split_batch(batch)
        logits = method.eval_heads(model, model(images, *extras))[head]
        probs = F.softmax(logits.astype("float32"), axis=-1)
        values, ids = paddle.topk(probs, k, axis=1)
        for i in range(ids.shape[0]):
            results.append((samples[done + i], ids[i].numpy(), values[i].numpy()))
        done += ids.shape[0]
        if report is not None:
            report.step(ids.shape[0])
    if report is not None:
        report.end(done)
    return results


def predict_main(method, argv=None):
    p = add_model_flags(argparse.ArgumentParser(description=f"{method.name}: predict classes for images"))
    p.add_argument("-image", type=str, required=True, help="image file, folder, or list file")
    p.add_argument("-topk", type=int, default=5)
    p.add_argument("-batch_size", type=int, default=32)
    p.add_argument("-csv", type=str, default=None, help="write the predictions to this CSV file")
    p.add_argument("-report", type=str, default=None,
                   help="folder for per_class_accuracy.csv, confusion_matrix.csv and confusion_matrix.png (needs "
                        "labels: a list file, or a folder with one sub-folder per class)")
    p.add_argument("-lat", type=str, default="nan", help="latitude of a single image (methods using metadata)")
    p.add_argument("-lon", type=str, default="nan", help="longitude of a single image")
    p.add_argument("-date", type=str, default="nan", help="date of a single image, YYYY-MM-DD")
    args = p.parse_args(argv)
    return run_entry(_predict, method, args)


def _predict(method, args):
    if args.csv:
        check_output_file(args.csv, "-csv")
    if args.report:
        check_writable(args.report)
    config, model = load_model(method, args)
    known = class_names_for(config, args.data_path, fallback=False)
    names = known or [str(i) for i in range(config.MODEL.NUM_CLASSES)]
    samples = collect_samples(args.image, args.data_path, (args.lat, args.lon, args.date), known)
    if args.report:
        check_report_labels(samples, config.MODEL.NUM_CLASSES, args.image, known)
    results = predict_samples(method, model, config, samples, args.batch_size, args.topk)
    print_predictions(results, names, args.csv)
    if args.report:
        counts = ClassCounts(config.MODEL.NUM_CLASSES).add([s.label for s, _, _ in results],
                                                           [int(ids[0]) for _, ids, _ in results])
        top1 = 100.0 * counts.correct.sum() / max(counts.count, 1)
        head = method.main_head_of(model)
        write_class_report(args.report, counts, known, f"{config.MODEL.NAME}, head '{head}': top-1 "
                           f"{top1:.2f}% on {counts.count} images", log=print)
    return results


def check_report_labels(samples, num_classes, source, names):
    """-report needs labelled images, each label a class of the model."""
    labels = [s.label for s in samples if s.label >= 0]
    if not labels:
        how = ("class sub-folders named like the classes" if names else
               "classes.txt under -data_path (or a checkpoint that names its classes) to label class sub-folders")
        raise DataError(f"-report: no labelled images in {source}; give a list file (path label) or a folder "
                        f"with {how}")
    bad = max(labels)
    if bad >= num_classes:
        raise DataError(f"-report: {source} has label {bad}, outside 0..{num_classes - 1} (MODEL.NUM_CLASSES)")
