"""Checkpoints: atomic writes, safe reads, strict weight loading.

A training checkpoint is one file holding the model, EMA, optimizer, LR scheduler, loss scaler, epoch, best metric,
random states and the config. Every file a user hands us is read with the restricted unpickler
(`common.safe_pickle`), so a malicious file cannot run code.
"""
import os
import random
import re
import warnings
import zipfile

import numpy as np
import paddle

from common.errors import NonFiniteError, SuiteError
from common.outdir import atomic_write
from common.formats import PADDLE_NAME_TABLE, checkpoint_format, safetensors_header
from common.safe_pickle import KEEP, CheckpointFormatError, load_paddle_file, rebuild, short_repr


class CheckpointMismatchError(SuiteError, ValueError):
    pass


LOW_PRECISION = (paddle.float16, paddle.bfloat16)


def as_float32(value):
    return value.astype("float32") if value.dtype in LOW_PRECISION else value


def atomic_save(obj, path):
    """paddle.save through `common.outdir.atomic_write`: flushed to disk, then renamed; a crash, kill or full disk
    leaves the previous file intact."""
    atomic_write(path, lambda tmp: paddle.save(obj, tmp))


def _not_a_checkpoint(path, fmt):
    """Why `path` (sniffed as `fmt`) cannot be read: a port advice for a real PyTorch / safetensors file, otherwise
    a 'damaged' error."""
    if os.path.getsize(path) == 0:
        return CheckpointFormatError(f"{path} is damaged or not a checkpoint (the file is empty)")
    reason = None
    if fmt == "torch_zip":
        try:
            with zipfile.ZipFile(path) as zf:
                if not any(n.endswith("data.pkl") and n.count("/") <= 1 for n in zf.namelist()):
                    reason = "a zip archive without the data.pkl of a PyTorch checkpoint"
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            reason = f"truncated or corrupt zip archive: {e}"
    elif fmt == "safetensors":
        try:
            with open(path, "rb") as f:
                safetensors_header(f, os.path.getsize(path))
        except CheckpointFormatError as e:
            reason = f"truncated or corrupt safetensors file: {e}"
    elif fmt not in ("torch_legacy", "torch_tar"):
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) == 9 and head[8:9] == b"{":
            claimed = int.from_bytes(head[:8], "little")
            reason = (f"truncated or corrupt safetensors file: its header claims {claimed} bytes, the file has "
                      f"{os.path.getsize(path)}")
        else:
            reason = (f"it does not start like a Paddle, PyTorch or safetensors checkpoint: first bytes "
                      f"{head[:8].hex(' ')}")
    if reason:
        return CheckpointFormatError(f"{path} is damaged or not a checkpoint ({reason})")
    kind = "safetensors" if fmt == "safetensors" else "PyTorch"
    return CheckpointMismatchError(
        f"{path} is a {kind} file, not a Paddle checkpoint; convert it first: "
        f"python -m common.port --model NAME --src {path} --dst out.pdparams")


def read_checkpoint(path):
    """A Paddle checkpoint (`paddle.save`) read safely: tensors as numpy arrays. Raises CheckpointFormatError for a
    damaged file, CheckpointMismatchError (with the port command) for a PyTorch / safetensors file."""
    fmt = checkpoint_format(path)
    if fmt != "pickle":
        raise _not_a_checkpoint(path, fmt)
    return load_paddle_file(path)


def resolve_checkpoint_path(path):
    """A PaddleViT habit: `-pretrained run/best` names run/best.pdparams when `run/best` itself does not exist."""
    if path and path != "auto" and not os.path.exists(path) and os.path.isfile(path + ".pdparams"):
        return path + ".pdparams"
    return path


def checkpoint_meta(method_name, config, class_names=None):
    """What a checkpoint says about itself besides the config text: the method, the model, the classes."""
    return {"method": method_name, "model_name": config.MODEL.NAME, "num_classes": int(config.MODEL.NUM_CLASSES),
            "class_names": [str(n) for n in class_names] if class_names else None}


def stored_run_info(obj):
    """(config text or None, meta dict or None) of a checkpoint object read by `read_checkpoint`: a training
    checkpoint of this suite carries both, a plain state dict (ported weights) neither. Both are data from a file,
    so only well-formed entries are returned."""
    if not isinstance(obj, dict):
        return None, None
    text = obj.get("config") if isinstance(obj.get("config"), str) else None
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
    if meta is not None:
        names = meta.get("class_names")
        meta = {"method": meta.get("method") if isinstance(meta.get("method"), str) else None,
                "model_name": meta.get("model_name") if isinstance(meta.get("model_name"), str) else None,
                "num_classes": meta.get("num_classes") if isinstance(meta.get("num_classes"), int) else None,
                "class_names": [str(n) for n in names] if isinstance(names, (list, tuple)) and
                all(isinstance(n, str) for n in names) else None}
    return text, meta


def extract_model_state(obj, prefer_ema=False):
    """Weights from a plain state dict or from a training checkpoint ({'model': ..., 'ema': ...})."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["ema"] if prefer_ema and isinstance(obj.get("ema"), dict) else obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"expected a dict of weights, got {type(obj).__name__}")
    # paddle.save(model.state_dict()) adds Paddle's own name-mapping entry, which is not a weight
    return {k: v for k, v in obj.items() if k != PADDLE_NAME_TABLE}


def _names(keys, limit=20):
    keys = list(keys)
    text = ", ".join(k if isinstance(k, str) else short_repr(k, 60) for k in keys[:limit])
    return text + (", ..." if len(keys) > limit else "")


def _np_dtype_of(tensor):
    """numpy dtype of a paddle tensor (None where numpy has none, e.g. bfloat16)."""
    try:
        return np.dtype(str(tensor.dtype).replace("paddle.", ""))
    except TypeError:
        return None


def _what(v):
    return f"{type(v).__name__} {short_repr(v, 40)}" if isinstance(v, (str, bytes, int, float)) else \
        type(v).__name__


def _head_hint(model, wrong, missing):
    """When only the classifier misfits: how to fit it (another class count, or a new head for fine-tuning)."""
    head = set(model.classifier_keys()) if hasattr(model, "classifier_keys") else set()
    misfits = {k for k, _, _ in wrong} | set(missing)
    if not head or not misfits or not misfits <= head:
        return None
    counts = sorted({a[-1] for k, a, _ in wrong if a})
    theirs = f" ({counts[0]} classes)" if len(counts) == 1 else ""
    return (f"only the classifier differs: set MODEL.NUM_CLASSES to the checkpoint's class count{theirs}, or, to "
            f"fine-tune to new classes, keep a new classifier with -opts MODEL.PRETRAINED_NEW_HEAD True")


def nonfinite_keys(state):
    """Keys of the floating tensors in `state` that hold a NaN or an infinity."""
    bad = []
    for k, v in state.items():
        if isinstance(v, paddle.Tensor):
            if v.dtype in (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64) and \
                    not bool(paddle.isfinite(v).all()):
                bad.append(k)
        elif isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
            bad.append(k)
    return bad


def check_state_dict(model, state, skip_keys=(), name="checkpoint", notes=None, head_hint=False):
    """Compare a state dict with the model: returns (usable dict, skipped keys) or raises naming every misfit.

    Values must be arrays of numbers; each is cast to the dtype of the model entry it loads into (float64 weights
    written by numpy code load into a float32 model), and `notes` (a list, when given) receives a line per cast.
    """
    targets = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in targets.items()}
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{name}: expected a dict of weights, got {type(state).__name__}")
    not_arrays = [(k, _what(v)) for k, v in state.items() if k in expected and not isinstance(v, (np.ndarray,
                                                                                                   paddle.Tensor))]
    not_numbers = [(k, str(v.dtype)) for k, v in state.items()
                   if k in expected and isinstance(v, np.ndarray) and v.dtype.kind not in "biuf"]
    bad = {k for k, _ in not_arrays + not_numbers}
    missing = [k for k in expected if k not in state and k not in skip_keys]
    unexpected = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), expected[k]) for k in expected
             if k in state and k not in bad and tuple(state[k].shape) != expected[k] and k not in skip_keys]
    if missing or unexpected or wrong or bad:
        lines = []
        if not_arrays:
            lines.append("not a tensor: " + ", ".join(f"{k} ({t})" for k, t in not_arrays[:20]))
        if not_numbers:
            lines.append("not an array of numbers: " + ", ".join(f"{k} (dtype {t})" for k, t in not_numbers[:20]))
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if wrong:
            lines.append("shape mismatch: " + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, a, b in wrong[:20]))
        hint = _head_hint(model, wrong, missing) if head_hint and not (unexpected or bad) else None
        if hint:
            lines.append(hint)
        raise CheckpointMismatchError(f"{name} does not fit the model:\n  " + "\n  ".join(lines))
    skipped = [k for k in skip_keys if k in expected and (k not in state or tuple(state[k].shape) != expected[k])]
    usable, casts = {}, {}
    for k, v in state.items():
        if k in skipped:
            continue
        want = _np_dtype_of(targets[k])
        if isinstance(v, np.ndarray) and want is not None and v.dtype != want:
            if want.kind in "biu" and v.dtype.kind == "f":
                raise CheckpointMismatchError(f"{name} does not fit the model: {k} holds {v.dtype} values where the "
                                              f"model keeps {want}")
            v = v.astype(want)
            casts.setdefault((str(state[k].dtype), str(want)), []).append(k)
        elif isinstance(v, np.ndarray) and want is None and v.dtype.kind == "f":  # e.g. a bfloat16 model (AMP O2)
            v = paddle.to_tensor(v).astype(targets[k].dtype)
            casts.setdefault((str(state[k].dtype), str(targets[k].dtype).replace("paddle.", "")), []).append(k)
        usable[k] = v
    broken = nonfinite_keys(usable)
    if broken:
        # refused rather than scored: Paddle's CPU relu maps NaN to 0, so NaN weights ahead of a ReLU can give finite,
        # constant logits that evaluation would count as a (bad) model's predictions
        raise NonFiniteError(f"{name}: {len(broken)} tensor(s) hold NaN / inf values ({_names(broken, 5)}); these "
                             f"weights are broken (a diverged run, a damaged file): use an earlier checkpoint")
    if notes is not None:
        for (src, dst), keys in casts.items():
            notes.append(f"{name}: cast {len(keys)} tensor(s) from {src} to the model's {dst} ({_names(keys, 5)})")
    return usable, skipped


def load_pretrained(model, path, new_head=False, prefer_ema=False, log=print, model_name=None, method=None):
    """Load weights only. With `new_head`, classifier weights that are absent or of another shape are left as
    initialised (fine-tuning to a new class count); anything else that does not fit is an error. With
    `prefer_ema` (EVAL.USE_EMA, -use_ema) the checkpoint's EMA weights are loaded, and a checkpoint without them
    is an error. A published name (``timm/...``, ``torchvision/...``, see common/hub.py) that is not a path is
    downloaded, verified, ported for `model_name` (MODEL.NAME; the name's first model when None) and cached; with
    `model_name`, a local PyTorch / safetensors file is ported with that model's rules and cached too."""
    from common import hub
    if hub.is_published_name(path):
        path = hub.resolve(path, model_name=model_name, method=method, log=log)
    elif model_name and hub.is_foreign_checkpoint(path):   # a PyTorch / safetensors file: ported on the fly
        path = hub.port_local(path, model_name, method=method, log=log, model=model)
    obj = read_checkpoint(path)
    if prefer_ema and not (isinstance(obj, dict) and isinstance(obj.get("ema"), dict) and obj["ema"]):
        raise CheckpointMismatchError(
            f"{path} holds no EMA weights (EVAL.USE_EMA / -use_ema): it was trained without EMA.ENABLE True, or it "
            f"holds plain weights; leave out -use_ema to use its weights")
    state = extract_model_state(obj, prefer_ema)
    head = model.classifier_keys() if new_head and hasattr(model, "classifier_keys") else []
    notes = []
    usable, skipped = check_state_dict(model, state, head, name=f"pretrained {path}", notes=notes, head_hint=True)
    with warnings.catch_warnings():   # Paddle warns about each key left out: check_state_dict accounted for them
        warnings.filterwarnings("ignore", message="Skip loading for")
        model.set_state_dict(usable)
    for note in notes:
        log(note)
    if skipped:
        log(f"pretrained {path}: kept the new classifier ({', '.join(skipped)}) instead of the checkpoint's")
    log(f"loaded pretrained {'EMA ' if prefer_ema else ''}weights from {path} ({len(usable)} tensors)")
    return skipped


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state):
    if not state:
        return
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]))


def to_tensors(obj):
    """numpy arrays (from the safe reader) -> paddle tensors, for optimizer/scaler state (iterative: shared and deep
    structures cost linear time, see `common.safe_pickle.rebuild`)."""
    return rebuild(obj, lambda x: paddle.to_tensor(x) if isinstance(x, np.ndarray) else KEEP, "optimizer state")


# ----------------------------------------------------------------------------------------------------------- save
def _param_name_map(model):
    """Paddle's unique parameter names (which depend on creation order) -> structured names (which don't)."""
    return {p.name: n for n, p in model.named_parameters()}


def _rename_opt_state(state, mapping):
    """Rename optimizer state keys that start with a parameter name, using `mapping` (longest match first)."""
    names = sorted(mapping, key=len, reverse=True)

    def rename(key):
        for n in names:
            if key == n or key.startswith(n + "_"):
                return mapping[n] + key[len(n):]
        return key

    out = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            out[key] = {rename(k): v for k, v in value.items()}
        elif key == PADDLE_NAME_TABLE:
            continue
        else:
            out[rename(key)] = value
    return out


def training_state(epoch, model, optimizer, scheduler, scaler, ema, run, config, meta):
    """One training checkpoint: everything `restore_training_checkpoint` needs to continue the run exactly.
    `run`: the run's progress {'global_step', 'best', 'history', 'saved_epochs', 'world_size'}; `meta`:
    `checkpoint_meta`. Optimizer state is keyed by structured parameter names, so a rebuilt model fits it."""
    return {
        # weights a user receives are float32, whatever the training precision (AMP O2 keeps float16 / bfloat16
        # parameters; the optimizer's float32 master weights are in its own state)
        "model": {k: as_float32(v) for k, v in model.state_dict().items()},
        "ema": ema.state_dict() if ema else None,
        "optimizer": _rename_opt_state(optimizer.state_dict(), _param_name_map(model)),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": epoch,
        "global_step": run["global_step"],
        "best": dict(run["best"]),
        "history": list(run["history"]),
        "saved_epochs": list(run["saved_epochs"]),
        "rng": rng_state(),
        "world_size": run["world_size"],
        "config": config.dump(),
        # what the checkpoint is, without building anything: -cfg-less evaluation / prediction, the launcher
        "meta": meta,
    }


def epoch_checkpoint_path(out_dir, epoch):
    return os.path.join(out_dir, f"epoch_{epoch}.pdparams")


def save_training_checkpoint(out_dir, state, numbered, is_best, keep):
    """Write `state` to last.pdparams, to epoch_<epoch>.pdparams when `numbered` (then prune), and to best.pdparams
    when `is_best`. Returns the numbered checkpoints still kept (`prune_epoch_checkpoints`)."""
    saved = list(state["saved_epochs"])
    atomic_save(state, os.path.join(out_dir, "last.pdparams"))
    if numbered:
        atomic_save(state, epoch_checkpoint_path(out_dir, state["epoch"]))
        saved = prune_epoch_checkpoints(out_dir, saved, keep)
    if is_best:
        atomic_save(state, os.path.join(out_dir, "best.pdparams"))
    return saved


def prune_epoch_checkpoints(out_dir, saved_epochs, keep):
    """Keep the newest `keep` (SAVE.KEEP; <= 0: all) numbered checkpoints of this run, `saved_epochs` being its own
    list carried through resumes: files of any other run in the folder are never touched. Returns the kept list."""
    if keep <= 0:
        return list(saved_epochs)
    for epoch in saved_epochs[:-keep]:
        path = epoch_checkpoint_path(out_dir, epoch)
        if os.path.exists(path):
            os.remove(path)
    return list(saved_epochs[-keep:])


# ----------------------------------------------------------------------------------------------------------- resume
# accumulators Paddle keeps per parameter (state keys '<param>_<name>_<n>'), by optimizer
_ACCUMULATORS = {"AdamW": {"moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc", "moment2_max"},
                 "Momentum": {"velocity"}, "SGD": set()}
_SAME_SHAPE = {"moment1", "moment2", "moment2_max", "velocity"}  # these have their parameter's shape


def _optimizer_class(optimizer):
    for cls in ("AdamW", "Momentum", "SGD"):
        if isinstance(optimizer, getattr(paddle.optimizer, cls)):
            return cls
    return None


def _stored_optimizer(config_text, path):
    """(optimizer class, description) from the config a training checkpoint stores, or (None, None)."""
    if not isinstance(config_text, str):
        return None, None
    from common.config import ConfigError, _read_yaml
    try:
        data = _read_yaml(f"{path} (its stored config)", text=config_text)
    except ConfigError:
        return None, None
    opt = data.get("TRAIN", {}).get("OPTIMIZER", {}) if isinstance(data.get("TRAIN"), dict) else {}
    if not isinstance(opt, dict) or not isinstance(opt.get("NAME"), str):
        return None, None
    name, momentum, nesterov = opt["NAME"], opt.get("MOMENTUM", 0), opt.get("NESTEROV", False)
    momentum = momentum if isinstance(momentum, (int, float)) else 0
    if name.lower() == "adamw":
        return "AdamW", f"AdamW (TRAIN.OPTIMIZER.NAME '{name}')"
    if name.lower() in ("sgd", "momentum"):
        cls = "Momentum" if momentum > 0 or nesterov is True else "SGD"
        return cls, f"{cls} (TRAIN.OPTIMIZER.NAME '{name}', MOMENTUM {momentum})"
    return None, f"TRAIN.OPTIMIZER.NAME '{name[:40]}'"


def _split_opt_key(key, params):
    """'<param>_<accumulator>_<n>' -> (param, accumulator), or None."""
    for p in params:
        if key.startswith(p + "_"):
            acc = re.sub(r"^fp32_master_\d+_", "", key[len(p) + 1:])  # AMP O2 keeps moments of fp32 copies
            head, _, tail = acc.rpartition("_")
            return p, (head if tail.isdigit() and head else acc)
    return None


def _check_optimizer_state(opt_state, model, optimizer, stored_desc):
    current = _optimizer_class(optimizer)
    if current is None:
        return []
    problems = []
    if not all(isinstance(k, str) for k in opt_state):
        return ["optimizer state has keys that are not names"]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    params = sorted(shapes, key=len, reverse=True)
    found, unknown, bad_shape, not_arrays = set(), [], [], []
    for key, value in opt_state.items():
        if key in ("LR_Scheduler", "master_weights", PADDLE_NAME_TABLE):
            continue
        split = _split_opt_key(key, params)
        if split is None:
            unknown.append(key)
            continue
        param, acc = split
        found.add(acc)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            not_arrays.append(f"{key} ({_what(value)})")
        elif acc in _SAME_SHAPE and tuple(value.shape) != shapes[param]:
            bad_shape.append(f"{key} {tuple(value.shape)} vs parameter {shapes[param]}")
    stored = next((cls for cls, accs in _ACCUMULATORS.items() if accs and found and found <= accs), None)
    if found and (stored != current or not found <= _ACCUMULATORS[current]):
        what = stored_desc or (f"{stored}" if stored else f"an optimizer with state {_names(sorted(found))}")
        problems.append(f"the checkpoint was trained with {what}, this run uses {current}")
    elif not found and current != "SGD":
        problems.append(f"the checkpoint has no {current} state (trained with {stored_desc or 'plain SGD'}?)")
    if unknown:
        problems.append(f"optimizer state for parameters the model does not have: {_names(unknown, 10)}")
    if not_arrays:
        problems.append(f"optimizer state entries that are not arrays of numbers: {', '.join(not_arrays[:10])}")
    if bad_shape:
        problems.append(f"optimizer state of the wrong shape: {', '.join(bad_shape[:10])}")
    return problems


def _check_rng(rng):
    if rng is None:
        return []
    try:
        if not isinstance(rng, dict):
            raise TypeError(type(rng).__name__)
        if "python" in rng:
            version, internal, gauss = rng["python"]
            random.Random().setstate((version, tuple(internal), gauss))
        if "numpy" in rng:
            np.random.RandomState().set_state(tuple(rng["numpy"]))
    except Exception as e:  # noqa: B902 - tried on throwaway generators: any failure means a damaged entry
        return [f"its random-number state is damaged ({type(e).__name__}: {str(e)[:100]})"]
    return []


def check_training_checkpoint(path, state, model, optimizer, scheduler, config, ema=False):
    """Check everything `Trainer.resume` will restore from `state` before anything is modified.

    Returns {'model': weights cast to the model's dtypes, 'ema': the same for the EMA weights or None, 'notes': [..]};
    raises CheckpointMismatchError naming each entry that does not fit (another optimizer, a missing or damaged
    entry, another model)."""
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} is not a training checkpoint (it holds a {type(state).__name__}); use "
                                      f"-pretrained to load weights only")
    needed = ("model", "optimizer", "lr_scheduler", "epoch")
    absent = [k for k in needed if k not in state]
    if "optimizer" in absent and "lr_scheduler" in absent:
        raise CheckpointMismatchError(f"{path} is not a training checkpoint (no 'optimizer' and 'lr_scheduler' "
                                      f"entries); use -pretrained to load weights only")
    if absent:
        raise CheckpointMismatchError(f"{path} cannot be resumed: the training checkpoint lacks "
                                      f"{', '.join(repr(k) for k in absent)}")
    problems = []
    for key, kind in (("model", dict), ("optimizer", dict), ("lr_scheduler", dict)):
        if not isinstance(state[key], kind):
            problems.append(f"'{key}' is a {type(state[key]).__name__}, not a dict")
    epoch = state["epoch"]
    if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
        problems.append(f"'epoch' is {_what(epoch)}, not an epoch number")
    for key, kind in (("global_step", (int, np.integer)), ("world_size", (int, np.integer)), ("best", dict),
                      ("history", list), ("saved_epochs", list), ("scaler", dict)):
        if state.get(key) is not None and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            problems.append(f"'{key}' is a {type(state[key]).__name__}")
    if problems:
        raise CheckpointMismatchError(f"{path} cannot be resumed: " + "; ".join(problems))
    notes = []  # the model first: another model is the most likely misfit, and its message the clearest
    weights, _ = check_state_dict(model, extract_model_state(state), name=f"{path} (model)", notes=notes)
    ema_weights = None
    if ema and isinstance(state.get("ema"), dict) and state["ema"]:
        ema_weights, _ = check_state_dict(model, extract_model_state(state["ema"]), name=f"{path} (EMA)",
                                          notes=notes)
    stored_cls, stored_desc = _stored_optimizer(state.get("config"), path)
    current = _optimizer_class(optimizer)
    if stored_cls and current and stored_cls != current:
        problems.append(f"the checkpoint was trained with {stored_desc}, this run uses {current} (TRAIN.OPTIMIZER."
                        f"NAME '{config.TRAIN.OPTIMIZER.NAME}')")
    else:
        problems += _check_optimizer_state(state["optimizer"], model, optimizer, stored_desc)
    want = set(scheduler.state_dict())
    for where, sched in (("'lr_scheduler'", state["lr_scheduler"]),
                         ("the optimizer's 'LR_Scheduler'", state["optimizer"].get("LR_Scheduler", {}))):
        if not isinstance(sched, dict):
            problems.append(f"{where} is a {type(sched).__name__}, not a dict")
        elif where.startswith("'lr") and want - set(sched):
            problems.append(f"{where} lacks {', '.join(sorted(want - set(sched)))}")
        elif any(not isinstance(v, (int, float, np.number)) or isinstance(v, bool)
                 for k, v in sched.items() if k in want):
            problems.append(f"{where} holds non-numbers: {short_repr(sched)}")
    problems += _check_rng(state.get("rng"))
    if problems:
        raise CheckpointMismatchError(
            f"{path} does not fit this run: " + "; ".join(problems) +
            f". Resume with the settings the checkpoint was trained with, or start a new run with -pretrained "
            f"{path} to load its weights only")
    return {"model": weights, "ema": ema_weights, "notes": notes}


def restore_training_checkpoint(path, model, optimizer, scheduler, scaler, ema, config, world, log=print):
    """Restore a training checkpoint into the run's pieces (`ema`, `scaler` may be None); everything is checked
    first (`check_training_checkpoint`), so a checkpoint that does not fit changes nothing. Python's and numpy's
    random states are restored too. Returns the run's progress: {'epoch', 'global_step', 'best' (None when not
    stored), 'history', 'saved_epochs', 'ema_restored'}; with an `ema` but no EMA weights in the checkpoint,
    'ema_restored' is False and the caller restarts the average from the restored model."""
    state = read_checkpoint(path)
    checked = check_training_checkpoint(path, state, model, optimizer, scheduler, config, ema=ema is not None)
    for note in checked["notes"]:
        log(note)
    model.set_state_dict(checked["model"])
    ema_restored = False
    if ema is not None:
        if checked["ema"] is not None:
            ema.set_state_dict(checked["ema"])
            ema_restored = True
        else:
            log("checkpoint has no EMA weights; EMA restarts from the current model")
    name_to_unique = {n: p.name for n, p in model.named_parameters()}
    optimizer.set_state_dict(to_tensors(_rename_opt_state(state["optimizer"], name_to_unique)))
    scheduler.set_state_dict(state["lr_scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(to_tensors(state["scaler"]))
    set_rng_state(state.get("rng"))
    if int(state.get("world_size") or world) != world:
        log(f"note: checkpoint was written with {state['world_size']} process(es), resuming with "
            f"{world}; the data order differs from an uninterrupted run")
    start = int(state["epoch"]) + 1
    log(f"resumed from {path}: epoch {state['epoch']} done, continuing at epoch {start}")
    return {"epoch": int(state["epoch"]), "global_step": int(state.get("global_step") or 0),
            "best": state.get("best"), "history": list(state.get("history") or []),
            "saved_epochs": [int(e) for e in state.get("saved_epochs") or []], "ema_restored": ema_restored}
