"""Prediction with a trained or ported model: `python <method>/predict.py -cfg ... -pretrained ... -image X`.

X is an image file, a folder (searched recursively) or a list file (`path label [extra columns]`, paths relative to
the list's folder or to -data_path). Prints the top-k classes with names (from classes.txt) and probabilities, and
writes them to a CSV with -csv. Methods that take metadata read it from the list's extra columns, or from -lat /
-lon / -date for single images.
"""
import argparse
import csv
import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F

from common import dist
from common.checkpoint import load_pretrained
from common.cli import build_parser, config_from_args
from common.data.datasets import (IMG_EXTENSIONS, DataError, ImageDataset, Sample, read_class_names,
                                  read_list_file)
from common.data.samplers import EvalBatchSampler
from common.engine.trainer import build_loader, split_batch
from common.errors import run_entry
from common.outdir import atomic_write, check_output_file


def add_model_flags(parser):
    parser.add_argument("-cfg", type=str, default=None, help="the model's yaml config")
    parser.add_argument("-pretrained", type=str, required=True, help="weights (.pdparams)")
    parser.add_argument("-data_path", type=str, default=None, help="root of list-file paths and classes.txt")
    parser.add_argument("-opts", nargs="+", default=[], metavar="KEY VALUE")
    return parser


def load_model(method, args):
    """Config from -cfg/-opts, model with -pretrained weights, in eval mode."""
    if paddle.device.get_device() == "cpu":
        dist.set_cpu_threads()   # the cores and MKL's fast path, as the runner gives training
    cli = build_parser().parse_args([])
    cli.cfg, cli.pretrained, cli.opts, cli.data_path = args.cfg, args.pretrained, args.opts, args.data_path
    cli.eval = True
    config = config_from_args(cli, method.get_config())
    model = method.build_model(config)
    load_pretrained(model, config.MODEL.PRETRAINED, prefer_ema=False, log=lambda msg: None)
    model.eval()
    return config, model


def collect_samples(target, data_path=None, extra=()):
    """Samples for an image file, a folder or a list file."""
    if os.path.isdir(target):
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(target) for f in files
                       if f.lower().endswith(IMG_EXTENSIONS))
        if not paths:
            raise DataError(f"no images found under {target}")
        return [Sample(p, -1, extra, target) for p in paths]
    if not os.path.exists(target):
        raise DataError(f"not found: {target}")
    if target.lower().endswith(IMG_EXTENSIONS):
        return [Sample(target, -1, extra, target)]
    root = data_path or os.path.dirname(os.path.abspath(target))
    return read_list_file(target, root)


def class_names_for(config, data_path):
    for root in (data_path, config.DATA.DATA_PATH):
        if root and config.DATA.CLASS_NAMES:
            names = read_class_names(os.path.join(root, config.DATA.CLASS_NAMES), config.MODEL.NUM_CLASSES)
            if names:
                return names
    return [str(i) for i in range(config.MODEL.NUM_CLASSES)]


@paddle.no_grad()
def predict_samples(method, model, config, samples, batch_size=32, topk=5, progress=True):
    """[(sample, top-k class ids, top-k probabilities)] using the method's eval transform and its main head."""
    dataset = ImageDataset(samples, method.eval_transform(config), meta_fn=method.meta_fn(config))
    loader = build_loader(dataset, EvalBatchSampler(len(dataset), batch_size), config.DATA.NUM_WORKERS)
    k = min(topk, config.MODEL.NUM_CLASSES)
    results, done = [], 0
    for batch in loader:
        images, _, extras = split_batch(batch)
        logits = method.eval_heads(method.forward(model, images, extras))[method.main_head]
        probs = F.softmax(logits.astype("float32"), axis=-1)
        values, ids = paddle.topk(probs, k, axis=1)
        for i in range(ids.shape[0]):
            results.append((samples[done + i], ids[i].numpy(), values[i].numpy()))
        done += ids.shape[0]
        if progress and len(samples) > batch_size:
            print(f"\r{done}/{len(samples)} images", end="", file=sys.stderr, flush=True)
    if progress and len(samples) > batch_size:
        print(file=sys.stderr)
    return results


def write_csv(path, results, names):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        k = len(results[0][1]) if results else 0
        w.writerow(["path", "label", "prediction", "prediction_name", "probability"] +
                   [f"top{i + 1}" for i in range(1, k)])
        for sample, ids, probs in results:
            w.writerow([sample.path, sample.label if sample.label >= 0 else "", int(ids[0]), names[int(ids[0])],
                        f"{probs[0]:.6f}"] + [f"{names[int(c)]}:{p:.4f}" for c, p in zip(ids[1:], probs[1:])])


def predict_main(method, argv=None):
    p = add_model_flags(argparse.ArgumentParser(description=f"{method.name}: predict classes for images"))
    p.add_argument("-image", type=str, required=True, help="image file, folder, or list file")
    p.add_argument("-topk", type=int, default=5)
    p.add_argument("-batch_size", type=int, default=32)
    p.add_argument("-csv", type=str, default=None, help="write the predictions to this CSV file")
    p.add_argument("-lat", type=str, default="nan", help="latitude of a single image (methods using metadata)")
    p.add_argument("-lon", type=str, default="nan", help="longitude of a single image")
    p.add_argument("-date", type=str, default="nan", help="date of a single image, YYYY-MM-DD")
    args = p.parse_args(argv)
    return run_entry(_predict, method, args)


def _predict(method, args):
    if args.csv:
        check_output_file(args.csv, "-csv")
    config, model = load_model(method, args)
    samples = collect_samples(args.image, args.data_path, (args.lat, args.lon, args.date))
    names = class_names_for(config, args.data_path)
    results = predict_samples(method, model, config, samples, args.batch_size, args.topk)
    for sample, ids, probs in results:
        top = ", ".join(f"{names[int(c)]} {pr:.3f}" for c, pr in zip(ids, probs))
        print(f"{sample.path}: {top}")
    labelled = [(s, ids) for s, ids, _ in results if s.label >= 0]
    if labelled:
        correct = sum(int(ids[0]) == s.label for s, ids in labelled)
        print(f"top-1 on {len(labelled)} labelled images: {100.0 * correct / len(labelled):.2f}% ({correct})")
    if args.csv:
        atomic_write(args.csv, lambda tmp: write_csv(tmp, results, names))
        print(f"wrote {args.csv}")
    return results
