"""Configuration: yacs defaults shared by every method, yaml files with `BASE` includes, command line last.

Precedence: common defaults < method additions (its `config.py`) < yaml (BASE files first, then the file) <
CLI flags < `-opts KEY VALUE ...`. A key that exists nowhere in the defaults fails with its full name.
"""
import os

import yaml
from yacs.config import CfgNode as CN

from common.errors import SuiteError


def get_default_config():
    _C = CN()
    _C.BASE = [""]

    _C.DATA = CN()
    _C.DATA.DATASET = "list"           # 'list' (train_list.txt / val_list.txt) or 'folder' (train/, val/ class trees)
    _C.DATA.DATA_PATH = ""
    _C.DATA.TRAIN_LIST = "train_list.txt"
    _C.DATA.VAL_LIST = "val_list.txt"
    _C.DATA.TRAIN_DIR = "train"         # for DATASET 'folder'
    _C.DATA.VAL_DIR = "val"
    _C.DATA.CLASS_NAMES = "classes.txt"  # optional, under DATA_PATH: one class name per line
    _C.DATA.BATCH_SIZE = 32             # per process
    _C.DATA.BATCH_SIZE_EVAL = 0         # per process; 0: same as BATCH_SIZE
    _C.DATA.IMAGE_SIZE = 224
    _C.DATA.IMAGE_CHANNELS = 3
    _C.DATA.CROP_PCT = 0.875            # eval: resize to IMAGE_SIZE / CROP_PCT, then center crop
    _C.DATA.RESIZE_SIZE = 0             # eval: explicit resize (short side); overrides CROP_PCT when > 0
    _C.DATA.SQUARE_RESIZE = False       # resize to a square (aspect not kept, torchvision Resize((s, s))) instead of
                                        # the short side: train (AUG.TRAIN_RESIZE) and eval; fine-grained recipes
    _C.DATA.INTERPOLATION = "bicubic"
    _C.DATA.MEAN = [0.485, 0.456, 0.406]
    _C.DATA.STD = [0.229, 0.224, 0.225]
    _C.DATA.NUM_WORKERS = 2
    _C.DATA.CHECK_FILES = True          # verify every listed image exists before training starts
    _C.DATA.SKIP_BAD_IMAGES = False     # True: an unreadable image is replaced by another sample, with a warning

    _C.AUG = CN()
    _C.AUG.TRAIN_RESIZE = 0             # > 0: resize + random crop (fine-grained recipes) instead of RandomResizedCrop
    _C.AUG.SCALE = [0.08, 1.0]          # RandomResizedCrop area range
    _C.AUG.RATIO = [3.0 / 4.0, 4.0 / 3.0]
    _C.AUG.HFLIP = 0.5
    _C.AUG.RAND_AUGMENT = "rand-m9-mstd0.5-inc1"  # timm-style policy string; '' disables
    _C.AUG.AUTO_AUGMENT = ""            # 'original', 'v0', ...; used when RAND_AUGMENT is ''
    _C.AUG.COLOR_JITTER = 0.4           # used when neither policy is set; 0 disables
    _C.AUG.RE_PROB = 0.25               # random erasing
    _C.AUG.RE_MODE = "pixel"
    _C.AUG.RE_COUNT = 1
    _C.AUG.MIXUP_ALPHA = 0.8
    _C.AUG.CUTMIX_ALPHA = 1.0
    _C.AUG.CUTMIX_MINMAX = []
    _C.AUG.MIXUP_PROB = 1.0
    _C.AUG.MIXUP_SWITCH_PROB = 0.5
    _C.AUG.MIXUP_MODE = "batch"

    _C.MODEL = CN()
    _C.MODEL.TYPE = ""
    _C.MODEL.NAME = ""
    _C.MODEL.NUM_CLASSES = 1000
    _C.MODEL.DROPOUT = 0.0
    _C.MODEL.DROPPATH = 0.0
    _C.MODEL.PRETRAINED = ""
    _C.MODEL.PRETRAINED_NEW_HEAD = False  # skip classifier weights whose shape differs (fine-tuning to new classes)
    _C.MODEL.RESUME = ""

    _C.TRAIN = CN()
    _C.TRAIN.EPOCHS = 300
    _C.TRAIN.WARMUP_EPOCHS = 5
    _C.TRAIN.WARMUP_ITERS = 0           # > 0 overrides WARMUP_EPOCHS
    _C.TRAIN.BASE_LR = 1e-3
    _C.TRAIN.WARMUP_START_LR = 1e-6
    _C.TRAIN.MIN_LR = 1e-5
    _C.TRAIN.LINEAR_SCALED_LR = 0       # > 0: lrs are given for this total batch and scaled to the real one
    _C.TRAIN.LR_SCHEDULER = CN()
    _C.TRAIN.LR_SCHEDULER.NAME = "cosine"  # 'cosine' | 'step' | 'constant'
    _C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30
    _C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1
    _C.TRAIN.OPTIMIZER = CN()
    _C.TRAIN.OPTIMIZER.NAME = "AdamW"   # 'AdamW' | 'SGD' | 'Momentum'
    _C.TRAIN.OPTIMIZER.MOMENTUM = 0.9
    _C.TRAIN.OPTIMIZER.NESTEROV = False
    _C.TRAIN.OPTIMIZER.BETAS = [0.9, 0.999]
    _C.TRAIN.OPTIMIZER.EPS = 1e-8
    _C.TRAIN.WEIGHT_DECAY = 0.05
    _C.TRAIN.GRAD_CLIP = 0.0            # global-norm clipping; 0 disables
    _C.TRAIN.ACCUM_ITER = 1
    _C.TRAIN.SMOOTHING = 0.1
    _C.TRAIN.SMOOTHING_MODE = "uniform"  # 'uniform': eps/C on every class; 'others': eps/(C-1) off-target
    _C.TRAIN.MAX_NONFINITE = 10          # consecutive non-finite losses tolerated before stopping

    _C.EMA = CN()
    _C.EMA.ENABLE = False
    _C.EMA.DECAY = 0.99996

    _C.AMP = CN()
    _C.AMP.ENABLE = False
    _C.AMP.LEVEL = "O1"                 # 'O1' | 'O2'
    _C.AMP.DTYPE = "float16"            # 'float16' | 'bfloat16'
    _C.AMP.INIT_SCALE = 65536.0

    _C.EVAL = CN()
    _C.EVAL.ONLY = False
    _C.EVAL.FREQ = 1                    # epochs between evaluations
    _C.EVAL.TOPK = [5]                  # top-k accuracies reported besides top-1 (k capped at the class count)
    _C.EVAL.PREDICTOR = False           # -eval through the exported model in Paddle Inference (the fast path; main
                                        # head only); False: the dygraph model

    _C.SAVE = CN()
    _C.SAVE.OUTPUT = "./output"
    _C.SAVE.FREQ = 1                    # epochs between numbered checkpoints (last/best always kept)
    _C.SAVE.KEEP = 2                    # numbered epoch checkpoints kept (0: all)

    _C.SEED = 0
    _C.REPORT_FREQ = 20
    _C.VISUALDL = True
    return _C


class ConfigError(SuiteError, ValueError):
    pass


def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of KEYS, got {type(data).__name__}")
    return data


def merge_yaml(config, path, _stack=()):
    """Merge `path` into `config`, after the files listed under its BASE key (paths relative to the file)."""
    path = os.path.abspath(path)
    if path in _stack:
        raise ConfigError(f"BASE include cycle: {' -> '.join(_stack + (path,))}")
    data = _read_yaml(path)
    for base in data.pop("BASE", None) or []:
        if base:
            merge_yaml(config, os.path.join(os.path.dirname(path), base), _stack + (path,))
    config.defrost()
    try:
        config.merge_from_other_cfg(CN(data))
    except KeyError as e:
        raise ConfigError(f"{path}: {e.args[0]}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return config


def merge_opts(config, opts):
    config.defrost()
    try:
        config.merge_from_list(list(opts))
    except KeyError as e:
        raise ConfigError(f"-opts: {e.args[0]}") from None
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"-opts: {e}") from None
    return config


def check_config(config):
    """Cross-field checks that a merge cannot express."""
    errors = []
    if config.TRAIN.ACCUM_ITER < 1:
        errors.append("TRAIN.ACCUM_ITER must be >= 1")
    if config.DATA.BATCH_SIZE < 1:
        errors.append("DATA.BATCH_SIZE must be >= 1")
    if config.MODEL.NUM_CLASSES < 1:
        errors.append("MODEL.NUM_CLASSES must be >= 1")
    if not 0 < config.DATA.CROP_PCT <= 1:
        errors.append("DATA.CROP_PCT must be in (0, 1]")
    if config.TRAIN.OPTIMIZER.NAME.lower() not in ("adamw", "sgd", "momentum"):
        errors.append(f"TRAIN.OPTIMIZER.NAME '{config.TRAIN.OPTIMIZER.NAME}' is not one of AdamW, SGD, Momentum")
    if config.TRAIN.LR_SCHEDULER.NAME not in ("cosine", "step", "constant"):
        errors.append(f"TRAIN.LR_SCHEDULER.NAME '{config.TRAIN.LR_SCHEDULER.NAME}' is not one of cosine, step, "
                      "constant")
    if config.AMP.LEVEL not in ("O1", "O2"):
        errors.append(f"AMP.LEVEL '{config.AMP.LEVEL}' is not O1 or O2")
    if config.AMP.DTYPE not in ("float16", "bfloat16"):
        errors.append(f"AMP.DTYPE '{config.AMP.DTYPE}' is not float16 or bfloat16")
    if config.TRAIN.SMOOTHING_MODE not in ("uniform", "others"):
        errors.append(f"TRAIN.SMOOTHING_MODE '{config.TRAIN.SMOOTHING_MODE}' is not uniform or others")
    if config.DATA.SQUARE_RESIZE and config.AUG.TRAIN_RESIZE <= 0:
        errors.append("DATA.SQUARE_RESIZE needs AUG.TRAIN_RESIZE > 0 (the square side before the training crop)")
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))


def save_config(config, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.dump())
    os.replace(tmp, path)
