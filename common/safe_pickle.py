"""Unpickling that never runs code from the file, and never lets the file make us allocate or loop without bound.

Pickle can call any importable function while loading. Checkpoints come from users and the internet, so every
loader in the suite goes through `RestrictedUnpickler`, which resolves only an explicit allow-list of globals
(containers, numpy array/dtype rebuilds, and whatever a caller adds, e.g. torch tensor rebuild stubs). Anything else
raises `UnsafePickleError` naming the global, before it is called.

An allow-list alone does not make a file harmless: a few bytes of pickle can ask for a huge memo table, call an
allowed constructor with a huge size (`bytearray(3_000_000_000)`, an array shape with no data behind it), call a
copying constructor a million times on one shared object, or build a "billion laughs" structure of shared
references that a naive recursive walk expands exponentially. So:

* the unpickler is the pure-Python one with its object-building opcodes replaced: calls (REDUCE, NEWOBJ, INST,
  OBJ) reach only allow-listed callables, allocating ones through checked wrappers; BUILD (setting an object's
  state) applies only to arrays, dtypes and the attributes of `argparse.Namespace` / `OrderedDict`;
  APPEND/SETITEM/ADDITEMS only to lists, dicts and sets; dict keys and set elements are checked before they are
  hashed (a tuple of shared tuples hashes in exponential time); and everything the calls build is charged to a
  budget proportional to the file's size (`BUDGET_FACTOR` x bytes + `BUDGET_FLOOR`). The memo is a dict (the C
  unpickler sizes its memo array by the largest index a file names: 9 bytes can make it allocate gigabytes);
* `rebuild` walks loaded objects iteratively, once per object however often it is referenced, and refuses cycles,
  nesting deeper than `MAX_DEPTH` and structures that expand to more than `MAX_OBJECTS` objects.
"""
import _compat_pickle
import argparse
import codecs
import collections
import io
import os
import pickle
import struct

import numpy as np

from common.errors import SuiteError


class UnsafePickleError(SuiteError, pickle.UnpicklingError):
    pass


class CheckpointFormatError(SuiteError, ValueError):
    """The file is not a checkpoint this reader understands, or it is damaged."""


MAX_DEPTH = 100             # containers inside containers; real checkpoints nest fewer than 10 levels
MAX_OBJECTS = 10_000_000    # objects a loaded structure may expand to, counting each reference to a shared object
MAX_KEY_NODES = 1000        # tuple elements (expanded) in one dict key or set element, checked before hashing
BUDGET_FACTOR = 8           # bytes the objects built while unpickling may take, per byte of pickle ...
BUDGET_FLOOR = 64 << 20     # ... plus this
_SMALL = 16                 # what an object without a payload is charged


def short_repr(obj, limit=120, _level=0):
    """A repr bounded in size and time, for error messages about file contents (a plain repr of a deeply nested or
    self-sharing structure can take forever or raise RecursionError)."""
    if isinstance(obj, (bool, float, complex, type(None))):
        text = repr(obj)
    elif isinstance(obj, int):
        text = repr(obj) if obj.bit_length() <= 64 else f"<int of {obj.bit_length()} bits>"
    elif isinstance(obj, (str, bytes, bytearray)):
        text = repr(obj[:limit])
    elif isinstance(obj, np.ndarray):
        text = f"array(shape={obj.shape}, dtype={obj.dtype})"
    elif isinstance(obj, (list, tuple, set, frozenset, dict)):
        if _level >= 2:
            text = f"<{type(obj).__name__} of {len(obj)}>"
        else:
            items = list(obj.items() if isinstance(obj, dict) else obj)[:6]
            if isinstance(obj, dict):
                parts = [f"{short_repr(k, 40, _level + 1)}: {short_repr(v, 40, _level + 1)}" for k, v in items]
            else:
                parts = [short_repr(v, 40, _level + 1) for v in items]
            more = ", ..." if len(obj) > len(items) else ""
            brackets = {list: "[]", tuple: "()", dict: "{}"}.get(type(obj), "{}")
            text = brackets[0] + ", ".join(parts) + more + brackets[1]
    else:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Allowed globals; the ones that could allocate more than the file holds are wrapped.

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    return _reconstruct, scalar


_RECONSTRUCT, _SCALAR = _numpy_reconstruct()
_MAX_EMPTY_ARRAY_BYTES = 4096  # numpy pickles `_reconstruct(ndarray, (0,), b'b')` and sets the real shape after


def _count(shape, what):
    """Element count of a shape given in a file (Python ints: no overflow)."""
    if not isinstance(shape, (tuple, list)) or len(shape) > 64:
        raise UnsafePickleError(f"{what}: bad shape {short_repr(shape)}")
    n = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise UnsafePickleError(f"{what}: bad shape {short_repr(shape)}")
        n *= d
    return n


def _np_reconstruct(subtype, shape, typecode):
    """`numpy.core.multiarray._reconstruct`, which allocates `shape` at once: only the empty array numpy writes."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing 'numpy._reconstruct' of {short_repr(subtype)} (only numpy.ndarray)")
    if not isinstance(typecode, (bytes, str)) or len(typecode) > 8:
        raise UnsafePickleError(f"refusing 'numpy._reconstruct' with type code {short_repr(typecode)}")
    nbytes = _count(shape, "numpy._reconstruct") * np.dtype(typecode).itemsize
    if nbytes > _MAX_EMPTY_ARRAY_BYTES:
        raise UnsafePickleError(f"refusing 'numpy._reconstruct' of shape {short_repr(shape)} ({nbytes} bytes with no "
                                f"data behind them)")
    return _RECONSTRUCT(subtype, tuple(shape), typecode)


def _np_scalar(dtype, data=None):
    """`numpy.core.multiarray.scalar`: without data it allocates dtype.itemsize bytes, so data must be present."""
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"refusing 'numpy.scalar' of {short_repr(dtype)}")
    if dtype.hasobject:
        if dtype != np.dtype(object):
            raise UnsafePickleError(f"refusing 'numpy.scalar' of dtype {dtype}")
        return data
    if isinstance(data, str):  # Python 2 pickles (encoding latin1)
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) < dtype.itemsize:
        raise UnsafePickleError(f"refusing 'numpy.scalar' of dtype {dtype} without its {dtype.itemsize} bytes")
    return _SCALAR(dtype, data)


def _np_frombuffer(buf, dtype, shape, order):
    """`numpy.core.numeric._frombuffer` (protocol-5 pickles): a view of bytes that are in the file."""
    if not isinstance(buf, (bytes, bytearray, memoryview, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype) \
            or dtype.hasobject or order not in ("C", "F"):
        raise UnsafePickleError("refusing 'numpy._frombuffer' of anything but bytes in the file")
    nbytes = memoryview(buf).nbytes
    if _count(shape, "numpy._frombuffer") * dtype.itemsize != nbytes:
        raise UnsafePickleError(f"numpy array of shape {tuple(shape)} and dtype {dtype} needs "
                                f"{_count(shape, 'numpy') * dtype.itemsize} bytes; the file holds {nbytes}")
    return np.frombuffer(buf, dtype=dtype).reshape(tuple(shape), order=order)


def _np_dtype(obj, align=False, copy=False):
    """`numpy.dtype` as numpy pickles it: of a type string (structured dtypes are refused; checkpoints hold numbers).
    Always a fresh copy: the file may set its state next (BUILD), which must never touch numpy's shared dtypes."""
    if isinstance(obj, bytes):
        obj = obj.decode("latin1")
    if not isinstance(obj, (str, np.dtype)) or len(obj if isinstance(obj, str) else "") > 64:
        raise UnsafePickleError(f"refusing 'numpy.dtype' of {short_repr(obj)} (only type names such as 'f4')")
    return np.dtype(obj, bool(align), True)


def _set_dtype_state(dtype, state):
    """dtype.__setstate__ for plain (non-structured) dtypes only."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or any(v is not None for v in state[2:5]):
        raise UnsafePickleError(f"refusing numpy dtype state {short_repr(state)} (structured dtypes are not "
                                f"checkpoint data)")
    dtype.__setstate__(state)


_PLAIN_TEXT_CODECS = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "ascii"}


def _plain_codec(encoding, what):
    # the name is checked before any codec lookup, which could import codec modules
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in _PLAIN_TEXT_CODECS:
        raise UnsafePickleError(f"refusing '{what}' with encoding {short_repr(encoding)}")
    return encoding


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    """`_codecs.encode`: protocol-2 pickles (paddle.save(..., protocol=2), torch) spell bytes as
    encode(str, 'latin1'); only plain text codecs, only of a string."""
    _plain_codec(encoding, "_codecs.encode")
    if not isinstance(text, str):
        raise UnsafePickleError("refusing '_codecs.encode' of a non-string")
    if errors not in ("strict", "replace", "ignore"):
        raise UnsafePickleError(f"refusing '_codecs.encode' with errors={short_repr(errors)}")
    return codecs.encode(text, encoding, errors)


def _bytearray(source=b"", encoding=None, errors="strict"):
    """`bytearray` of data that is in the file: bytes, text or a list of byte values; never of a size."""
    if isinstance(source, (bytes, bytearray)) and encoding is None:
        return bytearray(source)
    if isinstance(source, str) and encoding is not None:
        _plain_codec(encoding, "builtins.bytearray")
        return bytearray(source, encoding, "strict" if errors not in ("replace", "ignore") else errors)
    if isinstance(source, list) and encoding is None and all(type(v) is int and 0 <= v < 256 for v in source):
        return bytearray(source)
    raise UnsafePickleError(f"refusing 'builtins.bytearray' of {type(source).__name__} {short_repr(source, 40)}: only "
                            f"bytes, text or a list of byte values that are in the file")


_bytearray.__name__ = "bytearray"

# (module, name) -> object. numpy moved `core` to `_core` in 2.0; files written by either version name either.
BASE_ALLOWED = {
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): _bytearray,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): np.ndarray,  # only as _reconstruct's first argument: calling it is refused
    ("numpy", "dtype"): _np_dtype,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
}
# numpy dtype classes (numpy.dtypes.Float32DType, ...) appear in pickles written by numpy >= 1.25.
for _name in dir(getattr(np, "dtypes", object())):
    if _name.endswith("DType"):
        BASE_ALLOWED[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)

_NEVER_CALLED = (np.ndarray,)
# classes a file may instantiate through NEWOBJ (cls.__new__(cls, *args)), which is how pickle spells them
_NEWOBJ_OK = (complex, argparse.Namespace, collections.OrderedDict, dict, list, set, frozenset, tuple)
_HASHING = {set: "elements", frozenset: "elements", dict: "pairs", collections.OrderedDict: "pairs"}


def _check_key(key):
    """Refuse a dict key / set element whose hash would take long: tuples are hashed recursively, element by element,
    however often the same inner tuple is shared."""
    if type(key) is not tuple:
        return
    todo, seen = [key], 0
    while todo:
        t = todo.pop()
        seen += len(t)
        if seen > MAX_KEY_NODES:
            raise UnsafePickleError(f"refusing a dict key or set element of more than {MAX_KEY_NODES} nested values")
        todo.extend(v for v in t if type(v) is tuple)


def _cost(obj):
    """Bytes charged for one object the file made us build (its payload; children are charged on their own)."""
    if isinstance(obj, np.ndarray):
        return max(_SMALL, obj.nbytes)
    if isinstance(obj, (bytes, bytearray, str)):
        return _SMALL + len(obj)
    if isinstance(obj, (list, tuple, dict, set, frozenset)):
        return _SMALL + 8 * len(obj)
    return _SMALL


def _source_size(file):
    try:
        return len(file.getbuffer())
    except AttributeError:
        pass
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return 0


class RestrictedUnpickler(pickle._Unpickler):
    """`pickle.Unpickler` limited to allow-listed globals, checked object building and a memory budget.

    `budget`: bytes the built objects may take (default `BUDGET_FACTOR` x the source's size + `BUDGET_FLOOR`);
    `persistent_load`: the caller's resolver of persistent ids (torch storages)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, allowed=None, persistent_load=None, budget=None, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = dict(BASE_ALLOWED)
        if allowed:
            self._allowed.update(allowed)
        self._callable = {id(v) for v in self._allowed.values()
                          if callable(v) and not any(v is n for n in _NEVER_CALLED)}
        self._newobj_ok = {id(v) for v in self._allowed.values() if any(v is t for t in _NEWOBJ_OK)}
        self._budget = budget if budget is not None else BUDGET_FACTOR * _source_size(file) + BUDGET_FLOOR
        self._left = self._budget
        self._fresh_dtypes = set()  # ids of the dtype copies made for this file (the only dtypes BUILD may change)
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module, name):
        # protocol < 3 pickles (torch writes 2) spell globals the Python 2 way (`__builtin__.set`); translate them as
        # pickle itself does, so the allow-list and error messages see the real names
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickleError("a global named by something other than text")
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load '{module:.100}.{name:.100}': checkpoints may only contain tensors, arrays and plain "
                f"containers (this file would call or build '{module:.100}.{name:.100}' while loading)") from None

    # ----- accounting
    def _charge(self, nbytes):
        self._left -= nbytes
        if self._left < 0:
            raise UnsafePickleError(
                f"refusing to load: the objects this file builds would take more than {self._budget >> 20} MiB, out "
                f"of proportion to its size (shared data copied over and over: a decompression bomb)")

    @staticmethod
    def _name(func):
        return getattr(func, "__qualname__", None) or type(func).__name__

    def _call(self, func, args, kwargs=None):
        if id(func) not in self._callable:
            raise UnsafePickleError(f"refusing to call {short_repr(func)} ({type(func).__name__}) while loading")
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise UnsafePickleError(f"bad arguments for '{self._name(func)}'")
        kind = _HASHING.get(func) if isinstance(func, type) else None
        if kind and args and type(args[0]) in (list, tuple):
            for item in args[0]:
                _check_key(item[0] if kind == "pairs" and type(item) in (tuple, list) and item else item)
        result = func(*args, **(kwargs or {}))
        self._charge(_cost(result))
        if func is _np_dtype:
            self._fresh_dtypes.add(id(result))
        return result

    # ----- opcodes that build objects
    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        stack[-1] = self._call(stack[-1], args)

    def _newobj(self, cls, args, kwargs):
        if id(cls) not in self._newobj_ok:
            raise UnsafePickleError(f"refusing to create a {short_repr(cls)} object while loading")
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise UnsafePickleError(f"bad arguments for '{cls.__name__}'")
        if cls in (set, frozenset) and args and type(args[0]) in (list, tuple):
            for item in args[0]:
                _check_key(item)
        obj = cls.__new__(cls, *args, **kwargs)
        self._charge(_cost(obj))
        self.append(obj)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._newobj(cls, args, {})

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._newobj(cls, args, kwargs)

    def _instantiate(self, klass, args):  # INST and OBJ (protocol 0/1)
        self.append(self._call(klass, tuple(args)))

    def load_build(self):
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, np.ndarray):
            _set_array_state(inst, state, self._charge)
        elif isinstance(inst, np.dtype) and id(inst) in self._fresh_dtypes:
            _set_dtype_state(inst, state)  # a private copy (see _np_dtype)
        elif isinstance(inst, (argparse.Namespace, collections.OrderedDict)) and type(state) is dict and \
                all(type(k) is str for k in state):
            # a Namespace's attributes; torch state dicts (OrderedDict) carry a `_metadata` attribute
            self._charge(_cost(state))
            inst.__dict__.update(state)
        elif state is not None:
            raise UnsafePickleError(f"refusing to set the state of a {type(inst).__name__} object while loading")

    def _target(self, kind, what):
        target = self.stack[-1]
        if not isinstance(target, kind):
            raise UnsafePickleError(f"refusing {what} on a {type(target).__name__} object")
        return target

    def load_append(self):
        value = self.stack.pop()
        self._target(list, "APPEND").append(value)

    def load_appends(self):
        items = self.pop_mark()
        self._target(list, "APPENDS").extend(items)

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        target = self._target(dict, "SETITEM")
        _check_key(key)
        target[key] = value

    def load_setitems(self):
        items = self.pop_mark()
        target = self._target(dict, "SETITEMS")
        for i in range(0, len(items) - 1, 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]

    def load_additems(self):
        items = self.pop_mark()
        target = self._target(set, "ADDITEMS")
        for item in items:
            _check_key(item)
        target.update(items)

    def load_frozenset(self):
        items = self.pop_mark()
        for item in items:
            _check_key(item)
        self.append(frozenset(items))

    def load_dict(self):
        items = self.pop_mark()
        for i in range(0, len(items) - 1, 2):
            _check_key(items[i])
        self.append({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)})


for _op, _method in ((pickle.REDUCE, "load_reduce"), (pickle.NEWOBJ, "load_newobj"),
                     (pickle.NEWOBJ_EX, "load_newobj_ex"), (pickle.BUILD, "load_build"),
                     (pickle.APPEND, "load_append"), (pickle.APPENDS, "load_appends"),
                     (pickle.SETITEM, "load_setitem"), (pickle.SETITEMS, "load_setitems"),
                     (pickle.ADDITEMS, "load_additems"), (pickle.FROZENSET, "load_frozenset"),
                     (pickle.DICT, "load_dict")):
    RestrictedUnpickler.dispatch[_op[0]] = getattr(RestrictedUnpickler, _method)


def _set_array_state(arr, state, charge):
    """ndarray.__setstate__ after checking that the data for the shape is really there (numpy allocates the shape
    of an object array before looking at its list)."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise UnsafePickleError(f"bad numpy array state {short_repr(state)}")
    shape, dtype, _fortran, raw = state[-4:]
    n = _count(shape, "numpy array")
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"numpy array state names {short_repr(dtype)} where a dtype belongs")
    if dtype.hasobject:
        if not isinstance(raw, list) or len(raw) != n or dtype.itemsize > 64:
            raise UnsafePickleError(f"numpy object array of shape {tuple(shape)} without its {n} elements")
    elif not isinstance(raw, (bytes, bytearray, str)) or len(raw) != n * dtype.itemsize:
        have = len(raw) if isinstance(raw, (bytes, bytearray, str)) else type(raw).__name__
        raise UnsafePickleError(f"numpy array of shape {tuple(shape)} and dtype {dtype} needs {n * dtype.itemsize} "
                                f"bytes; the file holds {have}")
    charge(n * dtype.itemsize)
    arr.__setstate__(state)


def restricted_loads(data, allowed=None, **kwargs):
    return RestrictedUnpickler(io.BytesIO(data), allowed=allowed, **kwargs).load()


# ---------------------------------------------------------------------------------------------------------------
# Walking what was loaded.

KEEP = object()  # `convert` returns this for objects it leaves alone


def rebuild(root, convert, what="checkpoint", max_depth=MAX_DEPTH, max_objects=MAX_OBJECTS):
    """A copy of `root` in which every object `x` with `convert(x) is not KEEP` is replaced by `convert(x)`.

    dicts (dict / OrderedDict), lists, tuples and argparse.Namespace are rebuilt with the same types; anything else is
    passed to `convert` and kept when it answers KEEP. Iterative; an object referenced many times is converted once
    and the copies share it like the original did. Raises `CheckpointFormatError` (naming `what`) for a container that
    contains itself, nesting deeper than `max_depth`, or a structure that expands to more than `max_objects` objects.
    """
    done = {}        # id(original) -> (converted, expanded object count)
    active = set()   # ids of the containers on the current path
    stack = []       # frames: [original, kind, keys, children, next child index, outputs, count]

    def begin(obj):
        """Finish `obj` at once (a leaf) or push its frame; returns True when a frame was pushed."""
        out = convert(obj)
        if out is not KEEP:
            done[id(obj)] = (out, 1)
            return False
        if isinstance(obj, dict):
            kind, keys, children = "dict", list(obj.keys()), list(obj.values())
        elif type(obj) in (list, tuple):
            kind, keys, children = type(obj).__name__, None, list(obj)
        elif isinstance(obj, argparse.Namespace):
            kind, keys, children = "namespace", list(vars(obj).keys()), list(vars(obj).values())
        else:
            done[id(obj)] = (obj, 1)
            return False
        if len(stack) >= max_depth:
            raise CheckpointFormatError(f"{what}: the data nests too deeply (more than {max_depth} levels of "
                                        f"containers)")
        active.add(id(obj))
        stack.append([obj, kind, keys, children, 0, [], 1])
        return True

    if not begin(root):
        return done[id(root)][0]
    while stack:
        frame = stack[-1]
        obj, kind, keys, children, i, outs, count = frame
        if i < len(children):
            child = children[i]
            entry = done.get(id(child))
            if entry is None:
                if id(child) in active:
                    raise CheckpointFormatError(f"{what}: a {type(child).__name__} in the data refers to itself "
                                                f"(a cycle); checkpoints hold trees of tensors")
                if begin(child):
                    continue
                entry = done[id(child)]
            outs.append(entry[0])
            frame[4] = i + 1
            frame[6] = count + entry[1]
            if frame[6] > max_objects:
                raise CheckpointFormatError(
                    f"{what}: the data expands to more than {max_objects:,} objects through shared references (a "
                    f"'billion laughs' file?)")
            continue
        if kind == "dict":
            out = (type(obj) if type(obj) in (dict, collections.OrderedDict) else dict)(zip(keys, outs))
        elif kind == "list":
            out = outs
        elif kind == "tuple":
            out = tuple(outs)
        else:
            out = argparse.Namespace(**dict(zip(keys, outs)))
        done[id(obj)] = (out, count)
        active.discard(id(obj))
        stack.pop()
    return done[id(root)][0]


def _paddle_tensor(obj):
    if type(obj) is tuple and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    return KEEP


def _unwrap_paddle_tensors(obj, what="checkpoint"):
    """paddle.save stores each tensor as (name, ndarray); return plain ndarrays."""
    return rebuild(obj, _paddle_tensor, what)


_TRUNCATED = ("truncated", "exhausted", "unpack requires", "ran out of input")


def damaged_message(path, e, data=None):
    """'<path> is damaged or not a checkpoint (truncated: ...)' for a reader's low-level failure `e`; `data`, the
    pickle, tells a cut-off file by its missing STOP opcode."""
    text = " ".join(str(e).split())[:300] or type(e).__name__
    detail = text if text == type(e).__name__ else f"{type(e).__name__}: {text}"
    cut = data is not None and data[-1:] != pickle.STOP
    if cut or isinstance(e, EOFError) or any(t in text.lower() for t in _TRUNCATED):
        return f"{path} is damaged or not a checkpoint (truncated: {detail})"
    return f"{path} is damaged or not a checkpoint ({detail})"


def with_path(e, path):
    """The same error with the file named in front (when its message does not name it already)."""
    text = str(e)
    return e if str(path) in text else type(e)(f"{path}: {text}")


def load_paddle_file(path):
    """Load a `.pdparams` / checkpoint written by `paddle.save` safely; tensors come back as numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise CheckpointFormatError(f"{path} is damaged or not a checkpoint (the file is empty)")
    try:
        obj = restricted_loads(data, encoding="latin1")
    except SuiteError as e:
        raise with_path(e, path) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, UnicodeDecodeError, OverflowError, MemoryError) as e:  # truncated or not a pickle at all
        raise CheckpointFormatError(damaged_message(path, e, data)) from e
    return _unwrap_paddle_tensors(obj, path)
