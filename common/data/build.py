"""From a config to data sets and loaders: what the engine, -eval and prediction read their images through.

The suite's loader itself is `common.data.loader.build_loader`: a bad sample ends the run with its DataError at
once, with 0 or N workers, and no data worker outlives the process."""
import os

from common import dist
from common.data.datasets import (DataError, ImageDataset, check_files_exist, class_folder_names, read_class_names,
                                  read_list_file, scan_class_folders)
from common.data.loader import build_loader
from common.data.samplers import EvalBatchSampler
from common.logger import get_logger

__all__ = ["build_datasets", "build_loader", "build_eval_loader", "eval_batch_size", "split_batch"]

logger = get_logger(__name__)


def _folder_classes(config, classes, train):
    """(class names or None, where they come from) for class folders: every split takes its labels from
    classes.txt (`classes`), else from the training split's folders, else (evaluation only) from its own folders."""
    d = config.DATA
    root = d.DATA_PATH
    if classes is not None:
        return classes, os.path.join(root, d.CLASS_NAMES)
    train_dir = os.path.join(root, d.TRAIN_DIR)
    if os.path.isdir(train_dir) or train:
        return class_folder_names(train_dir), f"the training split {train_dir}"
    # evaluation only, with neither classes.txt nor a training split to name the classes: val's own folders
    logger.warning(
        "no %s and no training folder %s: labels are the sorted class folders of %s, which match the model only "
        "if it was trained on folders with the same names", os.path.join(root, d.CLASS_NAMES or "classes.txt"),
        train_dir, os.path.join(root, d.VAL_DIR))
    return None, None


def _split_samples(config, method, split, classes, train):
    """(samples, what to name them by in errors) of `split` ('train' / 'val'): the method's own reader, else the
    list file or the class folders of DATA.DATASET."""
    d = config.DATA
    root, num_classes = d.DATA_PATH, config.MODEL.NUM_CLASSES
    split_list, split_dir = (d.TRAIN_LIST, d.TRAIN_DIR) if split == "train" else (d.VAL_LIST, d.VAL_DIR)
    samples = method.read_samples(config, split)
    if samples is not None:
        return samples, f"the {split} split (DATA.DATASET '{d.DATASET}')"
    if d.DATASET == "list":
        return read_list_file(os.path.join(root, split_list), root, num_classes), split_list
    if d.DATASET == "folder":
        names, source = _folder_classes(config, classes, train)
        folder = os.path.join(root, split_dir)
        samples, found = scan_class_folders(folder, names, source)
        if len(found) != num_classes:
            raise DataError(f"{folder if names is None else source}: {len(found)} classes but "
                            f"MODEL.NUM_CLASSES is {num_classes}")
        return samples, split_dir
    raise DataError(f"DATA.DATASET '{d.DATASET}' is not 'list' or 'folder'")


def build_datasets(config, method, train=True, val=True):
    """(train set or None, val set or None) from list files or class folders under DATA.DATA_PATH."""
    d = config.DATA
    root = d.DATA_PATH
    if not root or not os.path.isdir(root):
        raise DataError(f"DATA.DATA_PATH '{root}' is not a folder (set it with -data_path)")
    classes = read_class_names(os.path.join(root, d.CLASS_NAMES), config.MODEL.NUM_CLASSES) if d.CLASS_NAMES else None
    meta_fn = method.meta_fn(config)

    def make(split):
        is_train = split == "train"
        samples, what = _split_samples(config, method, split, classes, train)
        if d.CHECK_FILES:
            check_files_exist(samples, what)
        transform = method.train_transform(config) if is_train else method.eval_transform(config)
        return ImageDataset(samples, transform, train=is_train, seed=config.SEED, meta_fn=meta_fn,
                            skip_bad_images=d.SKIP_BAD_IMAGES, classes=classes)

    return make("train") if train else None, make("val") if val else None


def eval_batch_size(config):
    return config.DATA.BATCH_SIZE_EVAL if config.DATA.BATCH_SIZE_EVAL > 0 else config.DATA.BATCH_SIZE


def build_eval_loader(config, val_set):
    """Exact distributed evaluation: every sample on exactly one rank."""
    sampler = EvalBatchSampler(len(val_set), eval_batch_size(config), dist.rank(), dist.world_size())
    return build_loader(val_set, sampler, config.DATA.NUM_WORKERS, config.DATA.SHARED_MEMORY)


def split_batch(batch):
    """(images, int64 labels [N], [extra inputs]) of a loader batch."""
    images, labels = batch[0], batch[1]
    return images, labels.astype("int64").reshape([-1]), list(batch[2:])
