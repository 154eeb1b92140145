"""Read PyTorch and safetensors checkpoints into numpy, without importing torch and without running pickled code.

Supported containers:

* the zip format written by ``torch.save`` since 1.6 (``<root>/data.pkl`` plus one ``<root>/data/<key>`` record per
  storage; the root folder name is whatever the writer chose),
* the older stream format (``torch.save(..., _use_new_zipfile_serialization=False)``): a magic number, the protocol
  version and a system-info dict as three small pickles, then the object pickle, then the list of storage keys,
  then each storage as an 8-byte little-endian element count followed by its raw bytes,
* ``.safetensors`` (8-byte little-endian header length, a JSON header, raw little-endian data),
* pickles written by ``paddle.save`` (delegated to :func:`common.safe_pickle.load_paddle_file`).

Torch pickles name functions such as ``torch._utils._rebuild_tensor_v2`` and classes such as ``torch.FloatStorage``.
The unpickler here resolves those names to small stand-ins defined in this module, which only record their
arguments; nothing from torch is imported and any other global is refused by
:class:`common.safe_pickle.RestrictedUnpickler`. Tensors are materialised as numpy arrays after the whole pickle has
been read (the stream format stores the data after the pickle), with every size, stride and offset checked against
the storage so that a crafted file cannot make numpy read outside a buffer.
"""
import argparse
import codecs
import collections
import io
import json
import os
import struct
import zipfile

import numpy as np

from common.errors import SuiteError
from common.safe_pickle import RestrictedUnpickler, UnsafePickleError, load_paddle_file

__all__ = [
    "CheckpointFormatError", "UnsafePickleError", "checkpoint_format", "read_torch_checkpoint", "read_safetensors",
    "write_safetensors", "load_checkpoint_any", "unwrap_state_dict", "is_tensor_like",
]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# the magic number as the first pickle spells it (opcode LONG1, 10 bytes, little-endian), whatever the protocol
_LEGACY_MAGIC_BYTES = b"\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little", signed=True)


class CheckpointFormatError(SuiteError, ValueError):
    """The file is not a checkpoint this reader understands, or it is damaged."""


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for the torch names that appear in checkpoint pickles.

_BF16 = "bfloat16"  # numpy has no bfloat16: such storages are held as uint16 and widened to float32 on output


class TorchDType:
    """What a pickled ``torch.<dtype>`` resolves to."""

    def __init__(self, name, np_dtype):
        self.name = name
        self.np_dtype = np_dtype  # numpy dtype string, _BF16, or None when numpy cannot represent it

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
    "bfloat16": _BF16, "int64": "<i8", "long": "<i8", "int32": "<i4", "int": "<i4", "int16": "<i2",
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
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": _BF16,
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
            if not isinstance(v, int) or v < 0:
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
        raise CheckpointFormatError(f"tensor rebuild got {dtype!r} where a torch dtype belongs")
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
    if func not in _TENSOR_REBUILDS:
        raise UnsafePickleError(f"refusing to call {getattr(func, '__name__', func)!r} from _rebuild_from_type_v2")
    return func(*args)


_PLAIN_TEXT_CODECS = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "ascii"}


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # protocol-2 pickles spell bytes objects as _codecs.encode(str, 'latin1'); only plain text codecs are allowed
    # (the name is checked before any codec lookup, which could import codec modules)
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in _PLAIN_TEXT_CODECS:
        raise UnsafePickleError(f"refusing '_codecs.encode' with encoding {encoding!r}")
    if not isinstance(text, str):
        raise UnsafePickleError("refusing '_codecs.encode' of a non-string")
    return codecs.encode(text, encoding, errors)


def _torch_size(*args):
    return tuple(*args)


def _torch_device(*args):
    return ":".join(str(a) for a in args)


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
        ("_codecs", "encode"): _codecs_encode,
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

def _bf16_to_float32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _tensor_to_numpy(ref, keep_dtype):
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
        item = 2 if np_dtype == _BF16 else np.dtype(np_dtype).itemsize
        if buf.nbytes % item:
            raise CheckpointFormatError(f"storage '{storage.key}' size is not a multiple of {torch_dtype!r}")
        buf = buf.view("<u2" if np_dtype == _BF16 else np_dtype)
    elif np_dtype is None:
        raise CheckpointFormatError(f"storage '{storage.key}' holds a dtype the reader does not support "
                                    f"(quantized tensors are not supported)")
    if any(n == 0 for n in ref.size):
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
    if np_dtype == _BF16:
        return _bf16_to_float32(out)
    if out.dtype == np.float16 and not keep_dtype:
        return out.astype(np.float32)
    return out


def _storage_to_numpy(storage, keep_dtype):
    ref = _TensorRef(storage, 0, (storage.numel,), (1,))
    return _tensor_to_numpy(ref, keep_dtype)


def _materialize(obj, keep_dtype, memo=None):
    """Replace every tensor/storage reference inside `obj` by a numpy array (containers rebuilt, same types)."""
    if memo is None:
        memo = {}
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _TensorRef):
        out = _tensor_to_numpy(obj, keep_dtype)
    elif isinstance(obj, (_StorageRef, _StorageView)):
        out = _storage_to_numpy(obj, keep_dtype)
    elif isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v, keep_dtype, memo)
    elif isinstance(obj, list):
        out = [_materialize(v, keep_dtype, memo) for v in obj]
    elif isinstance(obj, tuple):
        out = tuple(_materialize(v, keep_dtype, memo) for v in obj)
    elif isinstance(obj, argparse.Namespace):
        out = argparse.Namespace(**{k: _materialize(v, keep_dtype, memo) for k, v in vars(obj).items()})
    else:
        out = obj
    memo[id(obj)] = out
    return out


# ---------------------------------------------------------------------------------------------------------------
# Container formats.

def _storage_np_dtype(storage_type):
    if not isinstance(storage_type, StorageType):
        raise CheckpointFormatError(f"storage reference names {storage_type!r}, not a torch storage type")
    return storage_type.np_dtype


def _item_size(np_dtype):
    if np_dtype is None:
        return 1
    return 2 if np_dtype == _BF16 else np.dtype(np_dtype).itemsize


def _buffer_to_array(data, np_dtype, numel, key, big_endian=False):
    if np_dtype is None:
        return np.frombuffer(data, dtype=np.uint8)  # unsupported dtype: kept as bytes, rejected if used
    dt = np.dtype("<u2" if np_dtype == _BF16 else np_dtype)
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
        raise CheckpointFormatError(f"zip archive with several data.pkl records: {roots}")
    return roots[0]


def _read_torch_zip(path, keep_dtype):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = _zip_root(names)
        big_endian = False
        if root + "byteorder" in names:
            order = zf.read(root + "byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"unknown byte order record {order!r}")
            big_endian = order == "big"
        storages = {}

        def persistent_load(pid):
            if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
                raise CheckpointFormatError(f"unexpected persistent id in data.pkl: {pid!r:.200}")
            _, storage_type, key, _location, numel = pid
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            if key in storages:
                return storages[key]
            np_dtype = _storage_np_dtype(storage_type)
            if not isinstance(numel, int) or numel < 0:
                raise CheckpointFormatError(f"storage '{key}': bad element count {numel!r}")
            record = f"{root}data/{key}"
            if record not in names:
                raise CheckpointFormatError(f"storage record '{record}' is missing from the archive")
            ref = _StorageRef(key, np_dtype, numel)
            with zf.open(record) as rf:
                data = rf.read(numel * _item_size(np_dtype))
            ref.array = _buffer_to_array(data, np_dtype, numel, key, big_endian)
            storages[key] = ref
            return ref

        with zf.open(root + "data.pkl") as f:
            data = f.read()
        obj = RestrictedUnpickler(io.BytesIO(data), allowed=TORCH_ALLOWED, persistent_load=persistent_load,
                                  encoding="latin1").load()
    return _materialize(obj, keep_dtype)


def _read_torch_legacy(path, keep_dtype):
    with open(path, "rb") as f:
        def small_pickle():
            return RestrictedUnpickler(f, allowed=TORCH_ALLOWED, encoding="latin1").load()

        magic = small_pickle()
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic number)")
        protocol = small_pickle()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported torch legacy protocol {protocol!r}")
        sys_info = small_pickle()
        if not isinstance(sys_info, dict):
            raise CheckpointFormatError(f"{path}: damaged torch checkpoint (no system-info record)")
        # storage bytes in this format are little-endian whatever machine wrote them
        storages = {}

        def persistent_load(pid):
            if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage") or len(pid) != 6:
                raise CheckpointFormatError(f"unexpected persistent id in checkpoint: {pid!r:.200}")
            _, storage_type, key, _location, numel, view = pid
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            np_dtype = _storage_np_dtype(storage_type)
            if not isinstance(numel, int) or numel < 0:
                raise CheckpointFormatError(f"storage '{key}': bad element count {numel!r}")
            root = storages.setdefault(key, _StorageRef(key, np_dtype, numel))
            if view is None:
                return root
            # very old writers could reference a slice of a storage: (view key, offset, size)
            view_key, offset, size = view
            return _StorageView(root, str(view_key), offset, size)

        obj = RestrictedUnpickler(f, allowed=TORCH_ALLOWED, persistent_load=persistent_load,
                                  encoding="latin1").load()
        keys = small_pickle()
        if not isinstance(keys, list):
            raise CheckpointFormatError(f"{path}: storage key list missing after the pickle")
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            if key not in storages:
                raise CheckpointFormatError(f"{path}: data for storage '{key}' that the pickle never named")
            ref = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{path}: truncated before storage '{key}'")
            (count,) = struct.unpack("<q", header)
            if count != ref.numel:
                raise CheckpointFormatError(f"{path}: storage '{key}' has {count} elements, {ref.numel} expected")
            nbytes = count * _item_size(ref.np_dtype)
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise CheckpointFormatError(f"{path}: truncated inside storage '{key}'")
            ref.array = _buffer_to_array(data, ref.np_dtype, count, key)
    return _materialize(obj, keep_dtype)


def read_torch_checkpoint(path, keep_dtype=False):
    """Load a file written by ``torch.save`` (zip or stream format) as Python containers of numpy arrays.

    float16 tensors become float32 unless `keep_dtype`; bfloat16 always becomes float32 (numpy has no bfloat16).
    Raises :class:`UnsafePickleError` if the pickle names anything but tensors, storages, dtypes and plain
    containers, and :class:`CheckpointFormatError` for damaged or unknown files.
    """
    fmt = checkpoint_format(path)
    if fmt == "torch_zip":
        return _read_torch_zip(path, keep_dtype)
    if fmt == "torch_legacy":
        return _read_torch_legacy(path, keep_dtype)
    if fmt == "torch_tar":
        raise CheckpointFormatError(f"{path}: the tar format of torch < 0.4 is not supported; re-save it with a "
                                    f"current torch")
    raise CheckpointFormatError(f"{path}: not a torch.save checkpoint (looks like: {fmt})")


# ---------------------------------------------------------------------------------------------------------------
# safetensors

_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": _BF16, "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "<i1", "U8": "<u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "|b1", "C64": "<c8",
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items() if v != _BF16}


def _safetensors_header(f, file_size):
    head = f.read(8)
    if len(head) != 8:
        raise CheckpointFormatError("safetensors file shorter than its header length")
    (n,) = struct.unpack("<Q", head)
    if n > file_size - 8:
        raise CheckpointFormatError(f"safetensors header length {n} exceeds the file size {file_size}")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointFormatError(f"safetensors header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointFormatError("safetensors header is not a JSON object")
    return header, 8 + n


def read_safetensors(path, keep_dtype=False, return_metadata=False):
    """Read a ``.safetensors`` file into {name: ndarray} (same dtype rules as :func:`read_torch_checkpoint`)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header, data_start = _safetensors_header(f, size)
        data = f.read()
    metadata = header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointFormatError(f"safetensors entry '{name}' is malformed: {info!r:.200}") from None
        if dtype_name not in _ST_DTYPES:
            raise CheckpointFormatError(f"safetensors entry '{name}' has unsupported dtype {dtype_name}")
        np_dtype = _ST_DTYPES[dtype_name]
        shape = tuple(shape)
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise CheckpointFormatError(f"safetensors entry '{name}' has a bad shape {shape}")
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        item = _item_size(np_dtype)
        if not (0 <= begin <= end <= len(data)) or end - begin != numel * item:
            raise CheckpointFormatError(f"safetensors entry '{name}' has bad data offsets {[begin, end]} for "
                                        f"{dtype_name}{list(shape)} (data section {len(data)} bytes)")
        arr = np.frombuffer(data, dtype="<u2" if np_dtype == _BF16 else np_dtype, count=numel, offset=begin)
        arr = arr.reshape(shape).astype(arr.dtype.newbyteorder("="), copy=True)
        if np_dtype == _BF16:
            arr = _bf16_to_float32(arr)
        elif arr.dtype == np.float16 and not keep_dtype:
            arr = arr.astype(np.float32)
        out[name] = arr
    if return_metadata:
        return out, metadata
    return out


def write_safetensors(path, tensors, metadata=None):
    """Write {name: ndarray} as ``.safetensors`` (tensors sorted by name, data 8-byte aligned header)."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if arr.dtype not in _ST_NAMES:
            raise TypeError(f"'{name}': dtype {arr.dtype} cannot be written to safetensors")
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Format sniffing and one entry point.

def checkpoint_format(path):
    """'torch_zip', 'torch_legacy', 'torch_tar', 'safetensors', 'pickle' (e.g. paddle.save) or 'unknown'."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(512)
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return "torch_zip"
        if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
            return "safetensors"
        if len(head) >= 262 and head[257:262] == b"ustar":
            return "torch_tar"
        if _LEGACY_MAGIC_BYTES in head[:40]:
            return "torch_legacy"
        if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
            return "pickle"
    return "unknown"


def load_checkpoint_any(path, keep_dtype=False, return_format=False):
    """Read any supported checkpoint (torch zip/stream, safetensors, paddle pickle) into numpy containers."""
    fmt = checkpoint_format(path)
    if fmt in ("torch_zip", "torch_legacy", "torch_tar"):
        obj = read_torch_checkpoint(path, keep_dtype=keep_dtype)
    elif fmt == "safetensors":
        obj = read_safetensors(path, keep_dtype=keep_dtype)
    elif fmt == "pickle":
        obj = load_paddle_file(path)
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
        return "{" + ", ".join(f"{k!r}: {_short_type(v)}" for k, v in list(obj.items())[:20]) + \
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
