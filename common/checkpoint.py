"""Checkpoints: atomic writes, safe reads, strict weight loading.

A training checkpoint is one file holding the model, EMA, optimizer, LR scheduler, loss scaler, epoch, best metric,
random states and the config. Every file a user hands us is read with the restricted unpickler
(`common.safe_pickle`), so a malicious file cannot run code.
"""
import os
import random

import numpy as np
import paddle

from common.errors import SuiteError
from common.porting.reader import checkpoint_format
from common.safe_pickle import load_paddle_file


class CheckpointMismatchError(SuiteError, ValueError):
    pass


def atomic_save(obj, path):
    """paddle.save to a temporary file in the same folder, then rename: a crash never leaves a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        paddle.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path):
    if checkpoint_format(path) != "pickle":
        raise CheckpointMismatchError(
            f"{path} is not a Paddle checkpoint (a PyTorch or safetensors file?); convert it first: "
            f"python -m common.port --model NAME --src {path} --dst out.pdparams")
    return load_paddle_file(path)


PADDLE_NAME_TABLE = "StructuredToParameterName@@"


def extract_model_state(obj, prefer_ema=False):
    """Weights from a plain state dict or from a training checkpoint ({'model': ..., 'ema': ...})."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["ema"] if prefer_ema and isinstance(obj.get("ema"), dict) else obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"expected a dict of weights, got {type(obj).__name__}")
    # paddle.save(model.state_dict()) adds Paddle's own name-mapping entry, which is not a weight
    return {k: v for k, v in obj.items() if k != PADDLE_NAME_TABLE}


def check_state_dict(model, state, skip_keys=()):
    """Compare a state dict with the model: returns (usable dict, skipped keys) or raises naming every misfit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state and k not in skip_keys]
    unexpected = [k for k in state if k not in expected]
    wrong = [(k, tuple(np.shape(state[k])), expected[k]) for k in expected
             if k in state and tuple(np.shape(state[k])) != expected[k] and k not in skip_keys]
    if missing or unexpected or wrong:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if wrong:
            lines.append("shape mismatch: " + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, a, b in wrong[:20]))
        raise CheckpointMismatchError("checkpoint does not fit the model:\n  " + "\n  ".join(lines))
    skipped = [k for k in skip_keys if k in expected and (k not in state or tuple(np.shape(state[k])) != expected[k])]
    usable = {k: v for k, v in state.items() if k not in skipped}
    return usable, skipped


def load_pretrained(model, path, new_head=False, prefer_ema=False, log=print):
    """Load weights only. With `new_head`, classifier weights that are absent or of another shape are left as
    initialised (fine-tuning to a new class count); anything else that does not fit is an error."""
    state = extract_model_state(read_checkpoint(path), prefer_ema)
    head = model.classifier_keys() if new_head and hasattr(model, "classifier_keys") else []
    usable, skipped = check_state_dict(model, state, head)
    model.set_state_dict(usable)
    if skipped:
        log(f"pretrained {path}: kept the new classifier ({', '.join(skipped)}) instead of the checkpoint's")
    log(f"loaded pretrained weights from {path} ({len(usable)} tensors)")
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
    """numpy arrays (from the safe reader) -> paddle tensors, for optimizer/scaler state."""
    if isinstance(obj, np.ndarray):
        return paddle.to_tensor(obj)
    if isinstance(obj, dict):
        return {k: to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_tensors(v) for v in obj]
    return obj
