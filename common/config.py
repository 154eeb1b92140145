"""Configuration: yacs defaults shared by every method, yaml files with `BASE` includes, command line last.

Precedence: common defaults < method additions (its `config.py`) < yaml (BASE files first, then the file) <
CLI flags < `-opts KEY VALUE ...`. A key that exists nowhere in the defaults fails with its full name.
"""
import math
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
    _C.DATA.SHARED_MEMORY = True        # workers pass batches through /dev/shm (False: through pipes, slower)
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
    _C.MODEL.METHOD = ""                # the method folder (resmlp, dynamic_mlp, pim, transfer), set by its config.py;
                                        # recorded in config.yaml and checkpoints, read by the launcher
    _C.MODEL.TYPE = ""
    _C.MODEL.NAME = ""
    _C.MODEL.NUM_CLASSES = 1000
    _C.MODEL.DROPOUT = 0.0
    _C.MODEL.DROPPATH = 0.0
    _C.MODEL.PRETRAINED = ""
    _C.MODEL.PRETRAINED_NEW_HEAD = False  # skip classifier weights whose shape differs (fine-tuning to new classes)
    _C.MODEL.RESUME = ""
    _C.MODEL.SYNC_BN = False            # BatchNorm statistics over all processes (SyncBatchNorm; GPUs only, see README)

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

    _C.DIST = CN()
    # DataParallel(find_unused_parameters): None or 'auto' (the default): True when the method says this configuration
    # leaves parameters out of every output of the model (Method.has_unused_parameters); True / False: forced
    _C.DIST.FIND_UNUSED_PARAMETERS = None

    _C.EVAL = CN()
    _C.EVAL.ONLY = False
    _C.EVAL.FREQ = 1                    # epochs between evaluations
    _C.EVAL.TOPK = []                   # top-k accuracies reported besides top-1; []: top-5 (capped at the
                                        # class count)
    _C.EVAL.PREDICTOR = False           # -eval through the exported model in Paddle Inference (-predictor), whatever
                                        # the set's size or the device
    _C.EVAL.PREDICTOR_MIN_SECONDS = 20     # -eval on CPU in float32 takes that path by itself when the first
                                        # batch says dygraph would need this long for the rest (0: never); either
                                        # way the first batch is checked against dygraph
    _C.EVAL.USE_EMA = False             # -eval / predict / export take the EMA weights of the -pretrained checkpoint
                                        # (-use_ema); a checkpoint without EMA weights is an error

    _C.SAVE = CN()
    _C.SAVE.OUTPUT = "./output"
    _C.SAVE.FREQ = 1                    # epochs between numbered checkpoints (last/best always kept)
    _C.SAVE.KEEP = 2                    # numbered epoch checkpoints kept (0: all)
    _C.SAVE.START_OVER = False          # train into a folder holding a run: move that run to previous_run_<N>/

    _C.SEED = 0
    _C.REPORT_FREQ = 20
    _C.VISUALDL = True
    return _C


class ConfigError(SuiteError, ValueError):
    pass


def _read_yaml(path, text=None):
    """The mapping in a YAML config file (or in `text`, which `path` then only names in messages).

    A file is data from a user, so it is checked before it is built: YAML aliases can make a few hundred bytes stand
    for billions of nodes (each alias a list of copies of the previous one), which PyYAML and yacs would expand and
    never finish. The event stream is scanned first (no recursion, linear time) and a document that expands to
    more than 100000 nodes, nests more than 100 levels or contains itself is refused. Syntax errors, non-UTF-8
    bytes and a non-mapping document are ConfigErrors naming the file (and the line)."""
    max_nodes, max_depth = 100_000, 100
    if text is None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save the config "
                              f"as UTF-8") from None

    def at(mark):
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    try:
        sizes, frames, open_anchors = {}, [], set()  # anchor -> expanded node count; [count, anchor] per collection
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                if len(frames) >= max_depth:
                    raise ConfigError(f"{path}: the document nests too deeply (more than {max_depth} levels)"
                                      f"{at(event.start_mark)}")
                frames.append([1, event.anchor])
                if event.anchor is not None:
                    open_anchors.add(event.anchor)
                continue
            if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                n, anchor = frames.pop()
                open_anchors.discard(anchor)
            elif isinstance(event, yaml.ScalarEvent):
                n, anchor = 1, event.anchor
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor in open_anchors:
                    raise ConfigError(f"{path}: alias *{event.anchor} refers to the node that contains it"
                                      f"{at(event.start_mark)}")
                n, anchor = sizes.get(event.anchor, 1), None
            else:
                continue
            if anchor is not None:
                sizes[anchor] = n
            if frames:
                frames[-1][0] += n
            if n > max_nodes or (frames and frames[-1][0] > max_nodes):
                raise ConfigError(f"{path}: the document expands to more than {max_nodes} values through its aliases "
                                  f"(*name){at(event.start_mark)}; a config this large is not a config (an alias "
                                  f"bomb?)")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        context = getattr(e, "context", None)
        raise ConfigError(f"{path}: invalid YAML{at(mark)}: {problem}" + (f" ({context})" if context else "")) \
            from None
    if data is None:
        data = {}
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
        raise ConfigError(f"{path}: {_unknown_key_message(config, e)}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return config


def all_keys(node, prefix=""):
    out = []
    for k, v in node.items():
        out += all_keys(v, f"{prefix}{k}.") if isinstance(v, CN) else [f"{prefix}{k}"]
    return out


def _unknown_key_message(config, error):
    """yacs' KeyError text, plus the nearest existing key for a misspelt one."""
    import difflib
    msg = str(error.args[0]) if error.args else str(error)
    key = msg.rsplit(":", 1)[-1].strip()
    close = difflib.get_close_matches(key, all_keys(config), n=1, cutoff=0.6)
    return f"{msg} (did you mean {close[0]}?)" if close else msg


def merge_opts(config, opts):
    config.defrost()
    try:
        config.merge_from_list(list(opts))
    except KeyError as e:
        raise ConfigError(f"-opts: {_unknown_key_message(config, e)}") from None
    except AssertionError as e:
        raise ConfigError(f"-opts: {_unknown_key_message(config, e) if 'Non-existent' in str(e) else e}") from None
    except ValueError as e:
        raise ConfigError(f"-opts: {e}") from None
    return config


# ---------------------------------------------------------------------------------------------------- validation
# One table of value rules, checked before any work: a bad value is named with its key, whatever the method.
def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v):
    return _is_number(v) and math.isfinite(v)


def at_least(lo):
    return lambda v: None if _finite(v) and v >= lo else f"must be a number >= {lo:g}"


def probability(v):
    return None if _finite(v) and 0 <= v <= 1 else "must be a probability in [0, 1]"


def fraction_below_one(v):
    return None if _finite(v) and 0 <= v < 1 else "must be in [0, 1)"


def one_of(*choices, fold_case=False):
    def check(v):
        got = v.lower() if fold_case and isinstance(v, str) else v
        allowed = [c.lower() for c in choices] if fold_case else choices
        return None if got in allowed else f"'{v}' is not one of {', '.join(map(str, choices))}"
    return check


def numbers(n, each):
    def check(v):
        if not isinstance(v, (list, tuple)) or len(v) != n:
            return f"must be a list of {n} numbers, got {v!r}"
        bad = [x for x in v if each(x) is not None]
        return f"{bad[0]!r} {each(bad[0])}" if bad else None
    return check


VALUE_RULES = {
    "DATA.BATCH_SIZE": at_least(1),
    "EVAL.PREDICTOR_MIN_SECONDS": at_least(0),
    "DATA.BATCH_SIZE_EVAL": at_least(0),
    "DATA.IMAGE_SIZE": at_least(1),
    "DATA.IMAGE_CHANNELS": at_least(1),
    "DATA.RESIZE_SIZE": at_least(0),
    "DATA.NUM_WORKERS": at_least(0),
    "DATA.CROP_PCT": lambda v: None if _finite(v) and 0 < v <= 1 else "must be in (0, 1]",
    "DATA.INTERPOLATION": one_of("bicubic", "bilinear", "nearest", "lanczos"),
    "AUG.TRAIN_RESIZE": at_least(0),
    "AUG.SCALE": numbers(2, lambda x: None if _finite(x) and 0 < x <= 1 else "must be in (0, 1]"),
    "AUG.RATIO": numbers(2, lambda x: None if _finite(x) and x > 0 else "must be > 0"),
    "AUG.HFLIP": probability,
    "AUG.COLOR_JITTER": at_least(0),
    "AUG.RE_PROB": probability,
    "AUG.RE_MODE": one_of("const", "rand", "pixel"),
    "AUG.RE_COUNT": at_least(1),
    "AUG.MIXUP_ALPHA": at_least(0),
    "AUG.CUTMIX_ALPHA": at_least(0),
    "AUG.MIXUP_PROB": probability,
    "AUG.MIXUP_SWITCH_PROB": probability,
    "AUG.MIXUP_MODE": one_of("batch", "pair", "elem"),
    "MODEL.NUM_CLASSES": at_least(1),
    "MODEL.DROPOUT": fraction_below_one,
    "MODEL.DROPPATH": lambda v: None if _finite(v) and v < 1 else "must be < 1 (negative: the model's default)",
    "TRAIN.EPOCHS": at_least(1),
    "TRAIN.WARMUP_EPOCHS": at_least(0),
    "TRAIN.WARMUP_ITERS": at_least(0),
    "TRAIN.BASE_LR": at_least(0),
    "TRAIN.WARMUP_START_LR": at_least(0),
    "TRAIN.MIN_LR": at_least(0),
    "TRAIN.LINEAR_SCALED_LR": at_least(0),
    "TRAIN.LR_SCHEDULER.NAME": one_of("cosine", "step", "constant"),
    "TRAIN.LR_SCHEDULER.DECAY_EPOCHS": at_least(1),
    "TRAIN.LR_SCHEDULER.DECAY_RATE": lambda v: None if _finite(v) and v > 0 else "must be a number > 0",
    "TRAIN.OPTIMIZER.NAME": one_of("AdamW", "SGD", "Momentum", fold_case=True),
    "TRAIN.OPTIMIZER.MOMENTUM": fraction_below_one,
    "TRAIN.OPTIMIZER.BETAS": numbers(2, fraction_below_one),
    "TRAIN.OPTIMIZER.EPS": lambda v: None if _finite(v) and v > 0 else "must be a number > 0",
    "TRAIN.WEIGHT_DECAY": at_least(0),
    "TRAIN.GRAD_CLIP": at_least(0),
    "TRAIN.ACCUM_ITER": at_least(1),
    "TRAIN.SMOOTHING": fraction_below_one,
    "TRAIN.SMOOTHING_MODE": one_of("uniform", "others"),
    "TRAIN.MAX_NONFINITE": at_least(1),
    "EMA.DECAY": probability,
    "AMP.LEVEL": one_of("O1", "O2"),
    "AMP.DTYPE": one_of("float16", "bfloat16"),
    "AMP.INIT_SCALE": lambda v: None if _finite(v) and v > 0 else "must be a number > 0",
    "EVAL.FREQ": at_least(1),
    "DIST.FIND_UNUSED_PARAMETERS": lambda v: None if v is None or v is True or v is False or v == "auto" else (
        f"must be True, False or 'auto' (None: auto), got {v!r}"),
    "SAVE.FREQ": at_least(0),
    "SAVE.KEEP": at_least(0),
    "SEED": at_least(0),
    "REPORT_FREQ": at_least(1),
}


def _get(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _cross_field_errors(config):
    d, errors = config.DATA, []
    channels = d.IMAGE_CHANNELS
    for key in ("MEAN", "STD"):
        values = list(d[key])
        if len(values) != channels:
            errors.append(f"DATA.{key} has {len(values)} values for DATA.IMAGE_CHANNELS {channels}")
        elif not all(_finite(v) for v in values):
            errors.append(f"DATA.{key} {values} must hold finite numbers")
    if any(_is_number(v) and v == 0 for v in d.STD):
        errors.append(f"DATA.STD {list(d.STD)} must not hold 0 (images are divided by it)")
    scale = list(config.AUG.SCALE)
    if len(scale) == 2 and all(_finite(v) for v in scale) and scale[0] > scale[1]:
        errors.append(f"AUG.SCALE {scale}: the first value must not exceed the second")
    for k in config.EVAL.TOPK:
        if not _is_number(k) or k != int(k) or not 1 <= k <= config.MODEL.NUM_CLASSES:
            errors.append(f"EVAL.TOPK value {k!r} must be an integer in 1..MODEL.NUM_CLASSES "
                          f"({config.MODEL.NUM_CLASSES})")
    if config.DATA.SQUARE_RESIZE and config.AUG.TRAIN_RESIZE <= 0:
        errors.append("DATA.SQUARE_RESIZE needs AUG.TRAIN_RESIZE > 0 (the square side before the training crop)")
    for key in ("RAND_AUGMENT", "AUTO_AUGMENT"):
        policy = config.AUG[key]
        if policy:
            from common.data.auto_augment import build_policy
            try:
                build_policy(policy, config.DATA.IMAGE_SIZE)
            except (ValueError, KeyError, IndexError, TypeError) as e:
                errors.append(f"AUG.{key} '{policy}': {e.args[0] if e.args else e}")
    if config.MODEL.RESUME and config.MODEL.RESUME != "auto" and config.EVAL.ONLY:
        errors.append("-resume continues training; to evaluate a checkpoint use -pretrained with -eval")
    return errors


def check_config(config):
    """Every value rule and cross-field check; raises one ConfigError naming every bad key."""
    errors = []
    for key, rule in VALUE_RULES.items():
        try:
            value = _get(config, key)
        except KeyError:
            continue
        problem = rule(value)
        if problem:
            errors.append(f"{key} {value!r}: {problem}" if not problem.startswith("'") else f"{key}: {problem}")
    errors += _cross_field_errors(config)
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))


def config_warnings(config):
    """Values that are legal but probably not meant."""
    t, warnings = config.TRAIN, []
    if not config.EVAL.ONLY and t.WARMUP_ITERS <= 0 and t.WARMUP_EPOCHS >= t.EPOCHS:
        warnings.append(f"TRAIN.WARMUP_EPOCHS {t.WARMUP_EPOCHS} >= TRAIN.EPOCHS {t.EPOCHS}: the learning rate "
                        f"never leaves warm-up")
    return warnings


def save_config(config, path):
    from common.outdir import atomic_write_text
    atomic_write_text(path, config.dump())
