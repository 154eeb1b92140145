"""Read ``torch.save`` files into numpy, without importing torch and without running pickled code.

Two containers:

* the zip format written by ``torch.save`` since 1.6 (``<root>/data.pkl`` plus one ``<root>/data/<key>`` record per
  storage; the root folder name is whatever the writer chose),
* the older stream format (``torch.save(..., _use_new_zipfile_serialization=False)``): a magic number, the protocol
  version and a system-info dict as three small pickles, then the object pickle, then the list of storage keys,
  then each storage as an 8-byte little-endian element count followed by its raw bytes.

Torch pickles name functions such as ``torch._utils._rebuild_tensor_v2`` and classes such as ``torch.FloatStorage``.
The unpickler here resolves those names to small stand-ins defined in this module, which only record their
arguments; nothing from torch is imported and any other global is refused by
:class:`common.safe_pickle.RestrictedUnpickler`. Tensors are materialised as numpy arrays after the whole pickle has
been read (the stream format stores the data after the pickle), with every size, stride and offset checked against
the storage so that a crafted file cannot make numpy read outside a buffer.
"""
import argparse
import collections
import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from common.errors import SuiteError
from common.formats import LEGACY_MAGIC_NUMBER, checkpoint_format
from common.porting.dtypes import BF16, MAX_DIMS, bf16_to_float32, item_size
from common.safe_pickle import (KEEP, CheckpointFormatError, RestrictedUnpickler, UnsafePickleError, damaged_message,
                                 rebuild, short_repr, with_path)

__all__ = ["read_torch_checkpoint", "TORCH_ALLOWED"]

LEGACY_PROTOCOL_VERSION = 1001

# Limits on what a file may make the reader allocate (bounded by the bytes actually present):
MAX_ZIP_RATIO = 200             # an archive member may decompress to at most this many times its compressed size ...
ZIP_RATIO_FLOOR = 64 << 20      # ... when it is larger than this
EXPAND_FACTOR = 16              # a view (stride 0, overlapping strides) may have this many times its storage's
EXPAND_FLOOR = 1 << 20          # elements, or this many, whichever is more ...
EXPAND_CAP = 1 << 28            # ... and never more than this (2**28 elements: 1 GiB of float32)
OUTPUT_FACTOR = 8               # all tensors together: at most this many bytes per byte of file ...
OUTPUT_FLOOR = 256 << 20        # ... plus this (views of one storage are each copied out)


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for the torch names that appear in checkpoint pickles.

class TorchDType:
    """What a pickled ``torch.<dtype>`` resolves to."""

    def __init__(self, name, np_dtype):
        self.name = name
        self.np_dtype = np_dtype  # numpy dtype string, BF16, or None when numpy cannot represent it

    def __repr__(self):
        return f"torch.{self.name}"


class StorageType:
    """What a pickled ``torch.<X>Storage`` class resolves to."""

    def __init__(self, name, np_dtype):
        self.name = name
        self.np_dtype = np_dtype

    def __repr__(self):
        return f"torch.{self.name}"


_DTYPES = {
    "float64": "<f8", "double": "<f8", "float32": "<f4", "float": "<f4", "float16": "<f2", "half": "<f2",
    "bfloat16": BF16, "int64": "<i8", "long": "<i8", "int32": "<i4", "int": "<i4", "int16": "<i2",
    "short": "<i2", "int8": "<i1", "uint8": "<u1", "bool": "|b1", "uint16": "<u2", "uint32": "<u4",
    "uint64": "<u8", "complex64": "<c8", "cfloat": "<c8", "complex128": "<c16", "cdouble": "<c16",
    # names torch may pickle that numpy cannot hold; loading a tensor of these fails with a clear message
    "complex32": None, "chalf": None, "qint8": None, "quint8": None, "qint32": None, "quint4x2": None,
    "quint2x4": None, "float8_e4m3fn": None, "float8_e5m2": None, "float8_e4m3fnuz": None,
    "float8_e5m2fnuz": None, "float8_e8m0fnu": None, "float4_e2m1fn_x2": None, "bits8": None, "bits16": None,
    "bits1x8": None, "bits2x4": None, "bits4x2": None,
}
TORCH_DTYPES = {name: TorchDType(name, np_dtype) for name, np_dtype in _DTYPES.items()}

_STORAGES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": BF16,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "<i1", "ByteStorage": "<u1",
    "BoolStorage": "|b1", "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16",
    "UntypedStorage": "<u1",
    "QInt8Storage": None, "QUInt8Storage": None, "QInt32Storage": None, "QUInt4x2Storage": None,
    "QUInt2x4Storage": None,
}
STORAGE_TYPES = {name: StorageType(name, np_dtype) for name, np_dtype in _STORAGES.items()}


class _StorageRef:
    """One storage named by the pickle; `array` (1-D, storage dtype) is attached once its bytes are read."""

    def __init__(self, key, np_dtype, numel):
        self.key = key
        self.np_dtype = np_dtype
        self.numel = numel
        self.array = None


class _StorageView:
    """A slice of another storage (only very old stream-format writers produced these)."""

    def __init__(self, root, key, offset, numel):
        for v in (offset, numel):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise CheckpointFormatError(f"storage view '{key}': bad offset/size {offset}, {numel}")
        self.root, self.key, self.offset, self.numel = root, key, offset, numel
        self.np_dtype = root.np_dtype

    @property
    def array(self):
        if self.root.array is None:
            return None
        if self.offset + self.numel > self.root.array.size:
            raise CheckpointFormatError(f"storage view '{self.key}' lies outside storage '{self.root.key}'")
        return self.root.array[self.offset:self.offset + self.numel]


class _TensorRef:
    """A tensor whose storage may not have been read yet."""

    def __init__(self, storage, offset, size, stride, np_dtype=None):
        if not isinstance(storage, (_StorageRef, _StorageView)):
            raise CheckpointFormatError(f"tensor rebuild got {type(storage).__name__} where a storage belongs")
        if type(size) not in (tuple, list) or type(stride) not in (tuple, list) or len(size) > MAX_DIMS:
            raise CheckpointFormatError(f"tensor rebuild: bad size/stride {short_repr(size)}, {short_repr(stride)}")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride):
            raise CheckpointFormatError(f"tensor rebuild: size {size} and stride {stride} differ in length")
        for v in (offset,) + size + stride:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise CheckpointFormatError(f"tensor rebuild: bad offset/size/stride {offset}, {size}, {stride}")
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.np_dtype = np_dtype or storage.np_dtype


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    # used for dtypes without a legacy storage class: the storage is untyped (bytes) and `dtype` says how to read it
    if not isinstance(dtype, TorchDType):
        raise CheckpointFormatError(f"tensor rebuild got {short_repr(dtype)} where a torch dtype belongs")
    return _TensorRef(storage, storage_offset, size, stride, np_dtype=("dtype", dtype))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


class _TensorClass:
    """Stand-in for the classes `torch.Tensor` / `torch.nn.Parameter` when a pickle names them as a type."""

    def __init__(self, name):
        self.name = name


_TENSOR_REBUILDS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
                    _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
    # written for tensors that carry Python attributes; the attributes are irrelevant for weights
    if not any(func is f for f in _TENSOR_REBUILDS):
        raise UnsafePickleError(f"refusing to call {short_repr(func)} from _rebuild_from_type_v2")
    if type(args) is not tuple:
        raise CheckpointFormatError(f"_rebuild_from_type_v2 arguments {short_repr(args)}")
    return func(*args)


def _torch_size(dims=()):
    if type(dims) not in (list, tuple) or len(dims) > MAX_DIMS or \
            any(not isinstance(d, int) or isinstance(d, bool) for d in dims):
        raise CheckpointFormatError(f"torch.Size of {short_repr(dims)}")
    return tuple(dims)


def _torch_device(*args):
    if len(args) > 2 or any(not isinstance(a, (str, int)) or isinstance(a, bool) for a in args):
        raise CheckpointFormatError(f"torch.device of {short_repr(args)}")
    return ":".join(str(a)[:64] for a in args)


def _torch_allowed():
    allowed = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorClass("Tensor"),
        ("torch._tensor", "Tensor"): _TensorClass("Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorClass("Parameter"),
        ("torch", "Size"): _torch_size,
        ("torch", "device"): _torch_device,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # training scripts often store their argparse namespace next to the weights; it only holds attributes
        ("argparse", "Namespace"): argparse.Namespace,
    }
    for name, dtype in TORCH_DTYPES.items():
        allowed[("torch", name)] = dtype
    for name, storage in STORAGE_TYPES.items():
        allowed[("torch", name)] = storage
        allowed[("torch.storage", name)] = storage
    return allowed


TORCH_ALLOWED = _torch_allowed()


# ---------------------------------------------------------------------------------------------------------------
# Turning references into arrays.

def _tensor_to_numpy(ref, keep_dtype, charge=None):
    """Copy a tensor out of its storage; `charge(nbytes, key)` is told the size of the copy before it is made."""
    storage = ref.storage
    if storage.array is None:
        raise CheckpointFormatError(f"storage '{storage.key}' was named but its data is missing from the file")
    buf = storage.array
    np_dtype = ref.np_dtype
    if isinstance(np_dtype, tuple):  # _rebuild_tensor_v3: reinterpret the untyped bytes
        torch_dtype = np_dtype[1]
        if torch_dtype.np_dtype is None:
            raise CheckpointFormatError(f"tensors of dtype {torch_dtype!r} are not supported by the reader")
        np_dtype = torch_dtype.np_dtype
        item = 2 if np_dtype == BF16 else np.dtype(np_dtype).itemsize
        if buf.nbytes % item:
            raise CheckpointFormatError(f"storage '{storage.key}' size is not a multiple of {torch_dtype!r}")
        buf = buf.view("<u2" if np_dtype == BF16 else np_dtype)
    elif np_dtype is None:
        raise CheckpointFormatError(f"storage '{storage.key}' holds a dtype the reader does not support "
                                    f"(quantized tensors are not supported)")
    numel = 1
    for n in ref.size:
        numel *= n
    if numel > buf.size:
        # more elements than the storage holds: only a view that repeats elements (stride 0, overlapping strides),
        # as `expand` makes, and only a modest one; a crafted file could ask for 10**9 copies of one number
        limit = min(max(EXPAND_FACTOR * buf.size, EXPAND_FLOOR), EXPAND_CAP)
        if numel > limit:
            raise CheckpointFormatError(
                f"tensor of size {ref.size} (stride {ref.stride}) has {numel} elements but its storage "
                f"'{storage.key}' holds only {buf.size}; a view repeating its storage is accepted up to {limit} "
                f"elements ({EXPAND_FACTOR}x the storage or {EXPAND_FLOOR}, at most {EXPAND_CAP})")
    out_item = 4 if np_dtype == BF16 or (buf.dtype == np.float16 and not keep_dtype) else buf.dtype.itemsize
    if charge is not None:
        charge(numel * out_item, storage.key)
    if numel == 0:
        out = np.zeros(ref.size, dtype=buf.dtype)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= buf.size:
            raise CheckpointFormatError(
                f"tensor (offset {ref.offset}, size {ref.size}, stride {ref.stride}) reaches element {last} of "
                f"storage '{storage.key}' which holds only {buf.size}")
        view = np.lib.stride_tricks.as_strided(
            buf[ref.offset:], shape=ref.size, strides=[s * buf.itemsize for s in ref.stride], writeable=False)
        out = np.array(view, order="C")
    if out.dtype.byteorder not in ("=", "|"):
        out = out.astype(out.dtype.newbyteorder("="))
    if np_dtype == BF16:
        return bf16_to_float32(out)
    if out.dtype == np.float16 and not keep_dtype:
        return out.astype(np.float32)
    return out


def _storage_to_numpy(storage, keep_dtype, charge=None):
    ref = _TensorRef(storage, 0, (storage.numel,), (1,))
    return _tensor_to_numpy(ref, keep_dtype, charge)


def _materialize(obj, keep_dtype, what="checkpoint", file_size=0):
    """Replace every tensor/storage reference inside `obj` by a numpy array (containers rebuilt, same types).

    Iterative and linear in the file (see `common.safe_pickle.rebuild`); the arrays copied out may take at most
    `OUTPUT_FACTOR` x `file_size` + `OUTPUT_FLOOR` bytes in all (many tensors can view one storage)."""
    budget = OUTPUT_FACTOR * file_size + OUTPUT_FLOOR
    left = [budget]

    def charge(nbytes, key):
        left[0] -= nbytes
        if left[0] < 0:
            raise CheckpointFormatError(
                f"{what}: its tensors would take more than {budget >> 20} MiB, out of proportion to the file's "
                f"{file_size} bytes (tensors copying the same storage '{key}' over and over?)")

    def convert(x):
        if isinstance(x, _TensorRef):
            return _tensor_to_numpy(x, keep_dtype, charge)
        if isinstance(x, (_StorageRef, _StorageView)):
            return _storage_to_numpy(x, keep_dtype, charge)
        return KEEP

    return rebuild(obj, convert, what)


# ---------------------------------------------------------------------------------------------------------------
# Container formats.

def _storage_np_dtype(storage_type):
    if not isinstance(storage_type, StorageType):
        raise CheckpointFormatError(f"storage reference names {short_repr(storage_type)}, not a torch storage type")
    return storage_type.np_dtype


def _buffer_to_array(data, np_dtype, numel, key, big_endian=False):
    if np_dtype is None:
        return np.frombuffer(data, dtype=np.uint8)  # unsupported dtype: kept as bytes, rejected if used
    dt = np.dtype("<u2" if np_dtype == BF16 else np_dtype)
    if big_endian:
        dt = dt.newbyteorder(">")
    need = numel * dt.itemsize
    if len(data) < need:
        raise CheckpointFormatError(f"storage '{key}' holds {len(data)} bytes, {need} expected")
    return np.frombuffer(data, dtype=dt, count=numel)


def _zip_root(names):
    roots = [n[: -len("data.pkl")] for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if not roots:
        raise CheckpointFormatError("zip archive without data.pkl: not a torch.save checkpoint")
    if len(roots) > 1:
        raise CheckpointFormatError(f"zip archive with several data.pkl records: {short_repr(roots)}")
    return roots[0]


def _zip_member(zf, name, path):
    """The archive member's info, refusing one that claims to decompress to far more than it takes (a zip bomb:
    reads stop at the claimed size, so the claim bounds what reading it can allocate)."""
    info = zf.getinfo(name)
    if info.file_size > ZIP_RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        raise CheckpointFormatError(
            f"{path}: archive member '{name}' claims {info.file_size} bytes from {info.compress_size} compressed "
            f"(more than {MAX_ZIP_RATIO}x): refusing a zip bomb")
    return info


def _storage_key(key):
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or not key or len(key) > 256:
        raise CheckpointFormatError(f"storage key {short_repr(key)} is not a short name")
    return key


def _element_count(numel, key):
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise CheckpointFormatError(f"storage '{key}': bad element count {short_repr(numel)}")
    return numel


def _read_torch_zip(path, keep_dtype):
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        root = _zip_root(names)
        big_endian = False
        if root + "byteorder" in names:
            _zip_member(zf, root + "byteorder", path)
            with zf.open(root + "byteorder") as bf:
                order = bf.read(16).decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byte order record {order!r}")
            big_endian = order == "big"
        storages = {}
        archive_size = os.path.getsize(path)
        read = {"packed": 0, "unpacked": 0}  # all storage records together, checked like one member

        def persistent_load(pid):
            if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
                raise CheckpointFormatError(f"{path}: unexpected persistent id in data.pkl: {short_repr(pid)}")
            _, storage_type, key, _location, numel = pid
            key = _storage_key(key)
            if key in storages:
                return storages[key]
            np_dtype = _storage_np_dtype(storage_type)
            numel = _element_count(numel, key)
            record = f"{root}data/{key}"
            if record not in names:
                raise CheckpointFormatError(f"{path}: storage record '{record}' is missing from the archive")
            info = _zip_member(zf, record, path)
            need = numel * item_size(np_dtype)
            if need > info.file_size:
                raise CheckpointFormatError(
                    f"{path}: storage '{key}' claims {numel} elements ({need} bytes) but its record holds "
                    f"{info.file_size} bytes")
            read["packed"] += info.compress_size
            read["unpacked"] += need
            if read["packed"] > archive_size or (read["unpacked"] > ZIP_RATIO_FLOOR and
                                                 read["unpacked"] > MAX_ZIP_RATIO * max(read["packed"], 1)):
                raise CheckpointFormatError(
                    f"{path}: its storage records claim {read['unpacked']} bytes from {read['packed']} compressed in "
                    f"a {archive_size}-byte archive (overlapping or over-compressed members): refusing a zip bomb")
            ref = _StorageRef(key, np_dtype, numel)
            with zf.open(record) as rf:
                data = rf.read(need)
            ref.array = _buffer_to_array(data, np_dtype, numel, key, big_endian)
            storages[key] = ref
            return ref

        _zip_member(zf, root + "data.pkl", path)
        with zf.open(root + "data.pkl") as f:
            data = f.read()
        obj = RestrictedUnpickler(io.BytesIO(data), allowed=TORCH_ALLOWED, persistent_load=persistent_load,
                                  encoding="latin1").load()
    return _materialize(obj, keep_dtype, path, os.path.getsize(path))


def _read_torch_legacy(path, keep_dtype):
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        def small_pickle():
            return RestrictedUnpickler(f, allowed=TORCH_ALLOWED, encoding="latin1").load()

        magic = small_pickle()
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic number)")
        protocol = small_pickle()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported torch legacy protocol {short_repr(protocol)}")
        sys_info = small_pickle()
        if not isinstance(sys_info, dict):
            raise CheckpointFormatError(f"{path}: damaged torch checkpoint (no system-info record)")
        # storage bytes in this format are little-endian whatever machine wrote them
        storages = {}

        def persistent_load(pid):
            if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage") or len(pid) != 6:
                raise CheckpointFormatError(f"{path}: unexpected persistent id in checkpoint: {short_repr(pid)}")
            _, storage_type, key, _location, numel, view = pid
            key = _storage_key(key)
            np_dtype = _storage_np_dtype(storage_type)
            numel = _element_count(numel, key)
            root = storages.setdefault(key, _StorageRef(key, np_dtype, numel))
            if view is None:
                return root
            # very old writers could reference a slice of a storage: (view key, offset, size)
            if type(view) is not tuple or len(view) != 3:
                raise CheckpointFormatError(f"{path}: bad storage view {short_repr(view)}")
            view_key, offset, size = view
            return _StorageView(root, _storage_key(view_key), offset, size)

        obj = RestrictedUnpickler(f, allowed=TORCH_ALLOWED, persistent_load=persistent_load,
                                  encoding="latin1").load()
        keys = small_pickle()
        if not isinstance(keys, list):
            raise CheckpointFormatError(f"{path}: storage key list missing after the pickle")
        for key in keys:
            key = _storage_key(key)
            if key not in storages:
                raise CheckpointFormatError(f"{path}: data for storage '{key}' that the pickle never named")
            ref = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{path}: truncated before storage '{key}'")
            (count,) = struct.unpack("<q", header)
            if count != ref.numel:
                raise CheckpointFormatError(f"{path}: storage '{key}' has {count} elements, {ref.numel} expected")
            nbytes = count * item_size(ref.np_dtype)
            if nbytes > file_size - f.tell():  # checked before reading: read(n) allocates n bytes up front
                raise CheckpointFormatError(f"{path}: truncated inside storage '{key}' ({nbytes} bytes claimed, "
                                            f"{file_size - f.tell()} left in the file)")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise CheckpointFormatError(f"{path}: truncated inside storage '{key}'")
            ref.array = _buffer_to_array(data, ref.np_dtype, count, key)
    return _materialize(obj, keep_dtype, path, file_size)


def read_torch_checkpoint(path, keep_dtype=False):
    """Load a file written by ``torch.save`` (zip or stream format) as Python containers of numpy arrays.

    float16 tensors become float32 unless `keep_dtype`; bfloat16 always becomes float32 (numpy has no bfloat16).
    Raises :class:`UnsafePickleError` if the pickle names anything but tensors, storages, dtypes and plain
    containers, and :class:`CheckpointFormatError` for damaged or unknown files.
    """
    fmt = checkpoint_format(path)
    if fmt in ("torch_zip", "torch_legacy"):
        reader = _read_torch_zip if fmt == "torch_zip" else _read_torch_legacy
        try:
            return reader(path, keep_dtype)
        except SuiteError as e:
            raise with_path(e, path) from None
        except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, struct.error, UnicodeDecodeError, OverflowError, NotImplementedError,
                zlib.error) as e:
            raise CheckpointFormatError(damaged_message(path, e)) from e
    if fmt == "torch_tar":
        raise CheckpointFormatError(f"{path}: the tar format of torch < 0.4 is not supported; re-save it with a "
                                    f"current torch")
    raise CheckpointFormatError(f"{path}: not a torch.save checkpoint (looks like: {fmt})")
