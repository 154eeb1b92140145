"""PaddleViT-style command line: single-dash flags for the common knobs, `-opts KEY VALUE ...` for any key.

Habits users bring from PaddleViT and PaddleClas are accepted: `-dataset imagenet2012` (the list layout),
`-pretrained run/best` for run/best.pdparams, `-ngpus N`, `-o KEY=VALUE` and `-opts KEY=VALUE`.

Where a checkpoint of this suite is given (`-eval -pretrained X`, predict / export / PIM tools `-pretrained X`,
`-resume X`), the config stored in it is the base instead of `-cfg`; an explicit `-cfg` still wins, with a note
naming the keys where the two differ. Plain state dicts (ported weights) carry no config, so they need `-cfg`.
"""
import argparse
import os
import re

from yacs.config import CfgNode as CN

from common.config import ConfigError, _read_yaml, check_config, merge_opts, merge_yaml

# flag -> config key
FLAG_KEYS = {
    "dataset": "DATA.DATASET",
    "data_path": "DATA.DATA_PATH",
    "output": "SAVE.OUTPUT",
    "batch_size": "DATA.BATCH_SIZE",
    "batch_size_eval": "DATA.BATCH_SIZE_EVAL",
    "image_size": "DATA.IMAGE_SIZE",
    "accum_iter": "TRAIN.ACCUM_ITER",
    "pretrained": "MODEL.PRETRAINED",
    "resume": "MODEL.RESUME",
}
# PaddleViT's name of the list layout (train_list.txt / val_list.txt)
DATASET_ALIASES = {"imagenet2012": "list"}
# keys that describe one invocation, not the model or the recipe: never taken from a checkpoint's stored config
# for evaluation and prediction, and left out of the -cfg / checkpoint comparison
RUN_KEYS = ("MODEL.PRETRAINED", "MODEL.RESUME", "MODEL.PRETRAINED_NEW_HEAD", "EVAL.ONLY", "EVAL.PREDICTOR",
            "EVAL.PREDICTOR_MIN_SECONDS", "EVAL.USE_EMA", "SAVE.OUTPUT", "SAVE.START_OVER", "DATA.DATA_PATH")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def build_parser(description="train or evaluate a model"):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-cfg", type=str, default=None, help="yaml config (may include others through BASE)")
    p.add_argument("-dataset", type=str, default=None, help="data layout: 'list' (train_list.txt/val_list.txt) "
                                                            "or 'folder' (class-per-folder train/ and val/)")
    p.add_argument("-data_path", type=str, default=None, help="data root holding the list files / folders")
    p.add_argument("-output", type=str, default=None, help="output folder (logs, checkpoints, config)")
    p.add_argument("-batch_size", type=int, default=None, help="training batch size per process")
    p.add_argument("-batch_size_eval", type=int, default=None, help="evaluation batch size per process")
    p.add_argument("-image_size", type=int, default=None)
    p.add_argument("-accum_iter", type=int, default=None, help="gradient accumulation steps")
    p.add_argument("-pretrained", type=str, default=None, help="weights to start from (.pdparams)")
    p.add_argument("-resume", type=str, default=None,
                   help="training checkpoint to continue from, or 'auto' for <output>/last.pdparams if present")
    p.add_argument("-eval", action="store_true", help="evaluate only")
    p.add_argument("-predictor", action="store_true",
                   help="with -eval: run the exported model in Paddle Inference (faster; main head only)")
    p.add_argument("-amp", action="store_true", help="automatic mixed precision (AMP.* keys for dtype/level)")
    p.add_argument("-use_ema", action="store_true",
                   help="with -eval: evaluate the EMA weights of the -pretrained checkpoint (EVAL.USE_EMA)")
    p.add_argument("-ngpus", type=int, default=None,
                   help="PaddleViT's process count: honoured by run_train_multi.sh / run_eval_multi.sh (GPUs, or "
                        "CPU processes like NPROC); a direct run is one process")
    add_opts_flags(p)
    return p


def add_opts_flags(p):
    p.add_argument("-opts", nargs="+", action="extend", default=[], metavar="KEY VALUE",
                   help="override any config key, e.g. -opts TRAIN.EPOCHS 10 TRAIN.BASE_LR 0.01 (may be repeated; "
                        "KEY=VALUE also works)")
    p.add_argument("-o", action="append", default=[], metavar="KEY=VALUE",
                   help="PaddleClas style override of one key, e.g. -o TRAIN.EPOCHS=10 (repeatable; after -opts)")
    return p


def opts_pairs(opts=(), o=()):
    """[KEY, VALUE, ...] from `-opts` tokens ('KEY VALUE' or 'KEY=VALUE') and `-o` tokens ('KEY=VALUE')."""
    pairs, tokens, i = [], list(opts), 0
    while i < len(tokens):
        key, eq, value = tokens[i].partition("=")
        if eq and _KEY_RE.fullmatch(key):
            pairs += [key, value]
            i += 1
        elif i + 1 < len(tokens):
            pairs += [tokens[i], tokens[i + 1]]
            i += 2
        else:
            raise ConfigError(f"-opts needs KEY VALUE pairs (or KEY=VALUE), got {len(tokens)} items: "
                              f"{' '.join(tokens)}")
    for item in o:
        key, eq, value = item.partition("=")
        if not eq or not _KEY_RE.fullmatch(key):
            raise ConfigError(f"-o takes KEY=VALUE (e.g. -o TRAIN.EPOCHS=10), got '{item}'")
        pairs += [key, value]
    return pairs


def _checkpoint_arg(args):
    """(path, flag) of the checkpoint whose stored config can stand in for -cfg: -resume X, or -pretrained X when
    evaluating or predicting (not when fine-tuning from it)."""
    resume = getattr(args, "resume", None)
    if resume and resume != "auto":
        return resume, "-resume"
    if getattr(args, "pretrained", None) and getattr(args, "eval", False):
        return args.pretrained, "-pretrained"
    return None, None


def _flat(data, prefix=""):
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _known_part(node, data, prefix=""):
    """The part of a stored config's mapping that this version's config has (older or newer suites may differ):
    (known mapping, dropped key names)."""
    known, dropped = {}, []
    for k, v in data.items():
        if k not in node:
            dropped.append(f"{prefix}{k}")
        elif isinstance(node[k], CN) and isinstance(v, dict):
            known[k], more = _known_part(node[k], v, f"{prefix}{k}.")
            dropped += more
        elif isinstance(node[k], CN) or isinstance(v, dict):
            dropped.append(f"{prefix}{k}")
        else:
            known[k] = v
    return known, dropped


def read_stored_config(path):
    """(stored config mapping or None, meta or None) of checkpoint `path`, read with the safe reader."""
    from common.checkpoint import read_checkpoint, stored_run_info
    text, meta = stored_run_info(read_checkpoint(path))
    data = _read_yaml(f"{path} (its stored config)", text=text) if text is not None else None
    if data is not None:
        data.pop("BASE", None)
    return data, meta


def stored_method(data, meta):
    """The method a checkpoint records: its meta, else MODEL.METHOD of its stored config (None when neither)."""
    if meta and meta.get("method"):
        return meta["method"]
    model = (data or {}).get("MODEL")
    found = model.get("METHOD") if isinstance(model, dict) else None
    return found if isinstance(found, str) and found else None


def _merge_stored(config, data, path, flag, notes):
    known, dropped = _known_part(config, data)
    try:
        config.merge_from_other_cfg(CN(known))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{path}: its stored config does not fit this version of the suite ({e}); give the "
                          f"model's config with -cfg") from None
    if dropped:
        notes.append(f"note: {path}'s stored config has keys this version does not know, ignored: "
                     f"{', '.join(dropped[:8])}{', ...' if len(dropped) > 8 else ''}")
    config.MODEL.RESUME, config.EVAL.ONLY, config.EVAL.PREDICTOR = "", False, False
    config.SAVE.START_OVER, config.EVAL.USE_EMA = False, False
    if flag == "-pretrained":   # evaluation / prediction of the checkpoint itself
        config.MODEL.PRETRAINED, config.MODEL.PRETRAINED_NEW_HEAD = "", False
    # the run's folder is where the checkpoint is now (the stored SAVE.OUTPUT may be another machine's path)
    config.SAVE.OUTPUT = os.path.dirname(os.path.abspath(path))
    notes.append(f"config: the one stored in {path} (MODEL.NAME {config.MODEL.NAME}, MODEL.NUM_CLASSES "
                 f"{config.MODEL.NUM_CLASSES}), flags and -opts on top")


def _differences(config, data, limit=6):
    """'KEY now (checkpoint was)' for the keys where the final config differs from a stored one; MODEL / DATA
    keys first."""
    def norm(v):
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v
    from common.config import _get
    diffs = []
    for key, stored in _flat(data).items():
        if key in RUN_KEYS:
            continue
        try:
            now = _get(config, key)
        except KeyError:
            continue
        if isinstance(now, CN) or norm(now) == norm(stored):
            continue
        diffs.append((key, now, stored))
    diffs.sort(key=lambda d: 0 if d[0].startswith("MODEL.") else 1 if d[0].startswith("DATA.") else 2)
    shown = ", ".join(f"{k} {now!r} (checkpoint {was!r})" for k, now, was in diffs[:limit])
    return len(diffs), shown + (f" and {len(diffs) - limit} more" if len(diffs) > limit else "")


def config_from_args(args, config, notes=None):
    """Apply the base (-cfg, else the config stored in the checkpoint given), then flags, then -opts / -o to
    `config` (the method's defaults); validate and freeze it. `notes` (a list, when given) receives lines for the
    log: where the config came from, and the keys where -cfg differs from the checkpoint's stored config."""
    from common.checkpoint import resolve_checkpoint_path
    notes = [] if notes is None else notes
    for flag in ("pretrained", "resume"):
        if getattr(args, flag, None):
            setattr(args, flag, resolve_checkpoint_path(getattr(args, flag)))
    own_method = config.MODEL.get("METHOD", "")
    ckpt, ckpt_flag = _checkpoint_arg(args)
    stored, meta = None, None
    if ckpt and os.path.isfile(ckpt):
        if getattr(args, "cfg", None):
            try:       # only for the comparison: a file that cannot be read is reported when it is loaded
                stored, meta = read_stored_config(ckpt)
            except Exception:  # noqa: B902 - the load that follows names the problem with the suite's error
                stored, meta = None, None
        else:
            stored, meta = read_stored_config(ckpt)
    elif ckpt and not getattr(args, "cfg", None):
        hint = (" (a published name needs the model's config: give -cfg configs/<method>/<model>.yaml)"
                if ckpt.startswith(("timm/", "torchvision/")) else "")
        raise ConfigError(f"{ckpt_flag} {ckpt}: checkpoint not found (nor {ckpt}.pdparams){hint}")
    theirs = stored_method(stored, meta)
    if own_method and theirs and theirs != own_method:
        raise ConfigError(f"{ckpt_flag} {ckpt} holds a {theirs} model (its MODEL.METHOD); this is {own_method}'s "
                          f"script: use {theirs}/main_multi_gpu.py, {theirs}/predict.py or {theirs}/export.py")
    if getattr(args, "cfg", None):
        merge_yaml(config, args.cfg)
    elif ckpt:
        if stored is None:
            raise ConfigError(f"{ckpt_flag} {ckpt} holds weights only (a plain state dict, e.g. ported weights), no "
                              f"stored config: give the model's config with -cfg (configs/<method>/<model>.yaml)")
        config.defrost()
        _merge_stored(config, stored, ckpt, ckpt_flag, notes)
    config.defrost()
    opts = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            opts += [key, str(value)]
    for flag, key in (("eval", "EVAL.ONLY"), ("amp", "AMP.ENABLE"), ("predictor", "EVAL.PREDICTOR"),
                      ("use_ema", "EVAL.USE_EMA")):
        if getattr(args, flag, False):
            opts += [key, "True"]
    merge_opts(config, opts + opts_pairs(getattr(args, "opts", None) or [], getattr(args, "o", None) or []))
    if str(config.DATA.DATASET).lower() in DATASET_ALIASES:
        config.DATA.DATASET = DATASET_ALIASES[str(config.DATA.DATASET).lower()]
    for key in ("PRETRAINED", "RESUME"):
        config.MODEL[key] = resolve_checkpoint_path(config.MODEL[key])
    if own_method and config.MODEL.get("METHOD", "") != own_method:
        raise ConfigError(f"MODEL.METHOD is '{config.MODEL.METHOD}' (from -cfg / -opts), but this is "
                          f"{own_method}'s script: use {config.MODEL.METHOD}/main_multi_gpu.py")
    if getattr(args, "cfg", None) and stored is not None:
        count, shown = _differences(config, stored)
        if count:
            notes.append(f"note: -cfg {args.cfg} (with flags and -opts) differs from the config stored in {ckpt} in "
                         f"{count} key(s): {shown}; the -cfg values are used (leave out -cfg to take the "
                         f"checkpoint's)")
    check_config(config)
    config.freeze()
    return config
