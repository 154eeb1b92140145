"""Read PyTorch and safetensors checkpoints into numpy, without importing torch and without running pickled code:
the one entry point, `load_checkpoint_any`, and `unwrap_state_dict`, which finds the weights inside a checkpoint.

Supported files, told apart by their first bytes (`common.formats.checkpoint_format`), not their extension:

* ``torch.save`` files, zip and legacy stream format (:mod:`common.porting.torch_reader`),
* ``.safetensors`` (:mod:`common.porting.safetensors_io`),
* pickles written by ``paddle.save`` (delegated to :func:`common.safe_pickle.load_paddle_file`).
"""
import os

from common.formats import PADDLE_NAME_TABLE, checkpoint_format
from common.porting.safetensors_io import read_safetensors, write_safetensors
from common.porting.torch_reader import read_torch_checkpoint
from common.safe_pickle import CheckpointFormatError, UnsafePickleError, load_paddle_file, short_repr

__all__ = [
    "CheckpointFormatError", "UnsafePickleError", "checkpoint_format", "read_torch_checkpoint", "read_safetensors",
    "write_safetensors", "load_checkpoint_any", "unwrap_state_dict", "is_tensor_like", "PADDLE_NAME_TABLE",
]


# ---------------------------------------------------------------------------------------------------------------
# One entry point.

def load_checkpoint_any(path, keep_dtype=False, return_format=False):
    """Read any supported checkpoint (torch zip/stream, safetensors, paddle pickle) into numpy containers."""
    fmt = checkpoint_format(path)
    if fmt in ("torch_zip", "torch_legacy", "torch_tar"):
        obj = read_torch_checkpoint(path, keep_dtype=keep_dtype)
    elif fmt == "safetensors":
        obj = read_safetensors(path, keep_dtype=keep_dtype)
    elif fmt == "pickle":
        obj = load_paddle_file(path)
    elif os.path.getsize(path) == 0:
        raise CheckpointFormatError(f"{path} is damaged or not a checkpoint (the file is empty)")
    else:
        raise CheckpointFormatError(f"{path}: unknown checkpoint format (not a torch zip/stream file, safetensors "
                                    f"or a pickle)")
    return (obj, fmt) if return_format else obj


# ---------------------------------------------------------------------------------------------------------------
# Finding the weights inside a checkpoint.

STATE_DICT_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "net", "network",
                   "params", "weights")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema", "ema_state_dict", "model_ema_state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def is_tensor_like(v):
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, type)


def _is_state_dict(obj):
    return (isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and all(is_tensor_like(v) for v in obj.values()))


def _describe(obj):
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{short_repr(k, 60)}: {_short_type(v)}" for k, v in list(obj.items())[:20]) + \
            (", ..." if len(obj) > 20 else "") + "}"
    return _short_type(obj)


def _short_type(v):
    if is_tensor_like(v):
        return f"tensor{tuple(v.shape)}"
    if isinstance(v, dict):
        return f"dict({len(v)})"
    return type(v).__name__


def unwrap_state_dict(obj, key=None, return_info=False, strip_prefixes=STRIP_PREFIXES):
    """Find the flat {name: tensor} dict inside a checkpoint.

    `key` selects a wrapper entry explicitly (``'model_ema'``; nested entries as ``'a/b'``); otherwise the first
    of ``state_dict``, ``model``, ... that is present is taken, level by level, and EMA entries are only used when
    nothing else is there. Prefixes such as ``module.`` (DataParallel) are removed when every key carries them.
    With `return_info`, also returns {'path': [...], 'stripped': [...], 'alternatives': [...]}.
    """
    info = {"path": [], "stripped": [], "alternatives": []}
    cur = obj
    if key:
        for part in key.split("/"):
            if not isinstance(cur, dict) or part not in cur:
                have = list(cur) if isinstance(cur, dict) else type(cur).__name__
                raise KeyError(f"checkpoint has no entry '{part}' (requested key '{key}'); available: {have}")
            cur = cur[part]
            info["path"].append(part)
    for _ in range(8):
        if isinstance(cur, dict) and PADDLE_NAME_TABLE in cur:
            cur = {k: v for k, v in cur.items() if k != PADDLE_NAME_TABLE}
        if _is_state_dict(cur):
            break
        if not isinstance(cur, dict):
            raise CheckpointFormatError(f"expected a dict of tensors, found {_describe(cur)}")
        found = [k for k in STATE_DICT_KEYS if isinstance(cur.get(k), dict)]
        ema = [k for k in EMA_KEYS if isinstance(cur.get(k), dict)]
        choices = found or ema
        if not choices:
            raise CheckpointFormatError(
                f"cannot find the weights in this checkpoint; its entries are {_describe(cur)}. "
                f"Pick one with --key")
        chosen = choices[0]
        info["alternatives"].extend("/".join(info["path"] + [k]) for k in found + ema if k != chosen)
        info["path"].append(chosen)
        cur = cur[chosen]
    else:
        raise CheckpointFormatError("checkpoint nests wrappers too deeply")
    state = dict(cur)
    for prefix in strip_prefixes:
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            info["stripped"].append(prefix)
    return (state, info) if return_info else state
