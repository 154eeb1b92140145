"""Unpickling that never runs code from the file.

Pickle can call any importable function while loading. Checkpoints come from users and the internet, so every
loader in the suite goes through `RestrictedUnpickler`, which resolves only an explicit allow-list of globals
(containers, numpy array/dtype rebuilds, and whatever a caller adds, e.g. torch tensor rebuild stubs). Anything else
raises `UnsafePickleError` naming the global, before it is called.
"""
import _compat_pickle
import collections
import io
import pickle

import numpy as np

from common.errors import SuiteError


class UnsafePickleError(SuiteError, pickle.UnpicklingError):
    pass


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    return _reconstruct, scalar


_RECONSTRUCT, _SCALAR = _numpy_reconstruct()

# (module, name) -> object. numpy moved `core` to `_core` in 2.0; files written by either version name either.
BASE_ALLOWED = {
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
}
# numpy dtype classes (numpy.dtypes.Float32DType, ...) appear in pickles written by numpy >= 1.25.
for _name in dir(getattr(np, "dtypes", object())):
    if _name.endswith("DType"):
        BASE_ALLOWED[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed=None, persistent_load=None, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = dict(BASE_ALLOWED)
        if allowed:
            self._allowed.update(allowed)
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module, name):
        # protocol < 3 pickles (torch writes 2) spell globals the Python 2 way (`__builtin__.set`); translate them as
        # pickle itself does, so the allow-list and error messages see the real names
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load '{module}.{name}': checkpoints may only contain tensors, arrays and plain "
                f"containers (this file would call or build '{module}.{name}' while loading)") from None


def restricted_loads(data, allowed=None, **kwargs):
    return RestrictedUnpickler(io.BytesIO(data), allowed=allowed, **kwargs).load()


def _unwrap_paddle_tensors(obj):
    """paddle.save stores each tensor as (name, ndarray); return plain ndarrays."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, dict):
        return type(obj)((k, _unwrap_paddle_tensors(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_unwrap_paddle_tensors(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap_paddle_tensors(v) for v in obj)
    return obj


def load_paddle_file(path):
    """Load a `.pdparams` / checkpoint written by `paddle.save` safely; tensors come back as numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = restricted_loads(data, encoding="latin1")
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise ValueError(f"{path}: not a readable Paddle checkpoint ({type(e).__name__}: {e})") from e
    return _unwrap_paddle_tensors(obj)
