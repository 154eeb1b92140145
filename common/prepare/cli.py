"""`python -m common.prepare DATASET --src DIR --dst DIR [options]`: one sub-command per data set."""
import argparse
import os

from common.errors import run_entry

from . import birds, folders, inat, vehicles
from .core import PrepareError, check_dst, write_prepared

# name -> (reader, one-line description)
DATASETS = {
    "imagenet": (folders.read_imagenet, "ImageNet-1k: train/<wnid>/, val/<wnid>/ or flat val/ + ground truth"),
    "cub": (birds.read_cub, "CUB-200-2011: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt"),
    "nabirds": (birds.read_nabirds, "NABirds: like CUB; sparse class ids renumbered 0..C-1 (class_mapping.txt)"),
    "inat21": (inat.read_inat21, "iNaturalist 2021: train.json + val.json, with latitude longitude date"),
    "inat21_mini": (inat.read_inat21_mini, "iNaturalist 2021 mini: train_mini.json + val.json, with metadata"),
    "aircraft": (vehicles.read_aircraft, "FGVC-Aircraft 2013b: trainval -> train, test -> val; --level"),
    "cars": (vehicles.read_cars, "Stanford Cars: devkit .mat files, cars_train/, cars_test/"),
    "dtd": (folders.read_dtd, "DTD: labels/{train,val,test}N.txt; --split N"),
    "caltech256": (folders.read_caltech256, "Caltech-256: 30 train per class (seeded), the rest for evaluation"),
    "folder": (folders.read_folder, "a class-per-folder tree: train/ and val/ (or test/)"),
}


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--src", required=True, help="the official download (never written to)")
    common.add_argument("--dst", required=True, help="where the list files go (created; outside --src)")
    common.add_argument("--skip-missing", action="store_true",
                        help="leave out listed images that do not exist (with a warning) instead of failing")
    common.add_argument("--link", action="store_true",
                        help="list symlinks under DST/images (whitespace in names -> '_') instead of the source "
                             "paths; needed when an image path contains whitespace")
    parser = argparse.ArgumentParser(
        prog="python -m common.prepare",
        description="Write train_list.txt / val_list.txt / classes.txt for a downloaded data set "
                    "(images are not copied; list paths are relative to --dst). "
                    "Options of a data set: python -m common.prepare DATASET --help")
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    subs = {name: sub.add_parser(name, parents=[common], help=desc, description=desc)
            for name, (_, desc) in DATASETS.items()}
    subs["aircraft"].add_argument("--level", choices=list(vehicles.LEVELS), default="variant",
                                  help="variant (100 classes, default), family (70) or manufacturer (30)")
    subs["dtd"].add_argument("--split", type=int, choices=range(1, 11), default=1, metavar="N",
                             help="which of the ten official splits (1..10, default 1)")
    c = subs["caltech256"]
    c.add_argument("--seed", type=int, default=0, help="seed of the per-class draw (default 0)")
    c.add_argument("--train-per-class", type=_positive, default=30, help="training images per class (default 30)")
    c.add_argument("--eval-per-class", type=_positive, default=None,
                   help="evaluation images per class (default: all the rest)")
    c.add_argument("--clutter", action="store_true", help="keep 257.clutter as a class")
    subs["imagenet"].add_argument("--val-labels", default=None,
                                  help="ground truth of a flat val/: LOC_val_solution.csv or 'filename wnid' lines "
                                       "(default: looked for in --src)")
    return parser


def prepare(dataset, src, dst, skip_missing=False, link=False, **options):
    """Prepare `dataset` from `src` into `dst`; raises PrepareError (a DataError) on bad input."""
    if dataset not in DATASETS:
        raise PrepareError(f"unknown data set '{dataset}'; choose from {', '.join(DATASETS)}")
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    if not os.path.isdir(src):
        raise PrepareError(f"--src {src} is not a folder")
    check_dst(src, dst)
    reader = DATASETS[dataset][0]
    prepared = reader(src, argparse.Namespace(**options))
    return write_prepared(prepared, src, dst, dataset, options, skip_missing=skip_missing, link=link)


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    dataset, src, dst = args.pop("dataset"), args.pop("src"), args.pop("dst")
    return run_entry(_prepare_status, dataset, src, dst, args, exit_on_error=False)


def _prepare_status(dataset, src, dst, options):
    prepare(dataset, src, dst, **options)
    return 0
