"""Read and write ``.safetensors`` files (an 8-byte little-endian header length, a JSON header, raw little-endian
data): every header entry is checked against the data section before anything is allocated."""
import json
import os
import struct

import numpy as np

from common.formats import safetensors_header
from common.outdir import atomic_write
from common.porting.dtypes import BF16, MAX_DIMS, bf16_to_float32, item_size
from common.safe_pickle import CheckpointFormatError, short_repr, with_path

__all__ = ["read_safetensors", "write_safetensors"]

_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": BF16, "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "<i1", "U8": "<u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "|b1", "C64": "<c8",
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items() if v != BF16}


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _safetensors_entry(name, info, data_len):
    """(numpy dtype, shape, begin, end) of one header entry, every field checked before anything is allocated."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise CheckpointFormatError(f"safetensors entry '{name}' is malformed (needs dtype, shape and data_offsets): "
                                    f"{short_repr(info)}")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_name, str):
        raise CheckpointFormatError(f"safetensors entry '{name}': dtype {short_repr(dtype_name)} is not a string")
    if dtype_name not in _ST_DTYPES:
        raise CheckpointFormatError(f"safetensors entry '{name}' has unsupported dtype {dtype_name[:40]}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_whole(d) and d >= 0 for d in shape):
        raise CheckpointFormatError(f"safetensors entry '{name}': shape {short_repr(shape)} is not a list of whole "
                                    f"numbers >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(v) for v in offsets):
        raise CheckpointFormatError(f"safetensors entry '{name}': data_offsets {short_repr(offsets)} is not a list "
                                    f"of two whole numbers")
    np_dtype = _ST_DTYPES[dtype_name]
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * item_size(np_dtype)
    begin, end = offsets
    if nbytes > data_len:
        raise CheckpointFormatError(f"safetensors entry '{name}': {dtype_name}{shape} needs {nbytes} bytes, more than "
                                    f"the whole data section ({data_len} bytes)")
    if not (0 <= begin <= end <= data_len) or end - begin != nbytes:
        raise CheckpointFormatError(f"safetensors entry '{name}' has bad data offsets {[begin, end]} for "
                                    f"{dtype_name}{shape} (data section {data_len} bytes)")
    return np_dtype, tuple(shape), begin, end


def read_safetensors(path, keep_dtype=False, return_metadata=False):
    """Read a ``.safetensors`` file into {name: ndarray} (same dtype rules as :func:`read_torch_checkpoint`)."""
    try:
        return _read_safetensors(path, keep_dtype, return_metadata)
    except CheckpointFormatError as e:
        raise with_path(e, path) from None


def _read_safetensors(path, keep_dtype, return_metadata):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header, data_start = safetensors_header(f, size)
        data = f.read()
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (not isinstance(metadata, dict) or
                                 not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise CheckpointFormatError(f"{path}: safetensors __metadata__ must map text to text, got "
                                    f"{short_repr(metadata)}")
    entries = {name: _safetensors_entry(name[:200], info, len(data)) for name, info in header.items()}
    # tensors may not share bytes: overlapping entries would let a small file stand for many copies of its data
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointFormatError(f"{path}: safetensors entries '{a[:200]}' and '{b[:200]}' overlap")
    out = {}
    for name, (np_dtype, shape, begin, end) in entries.items():
        numel = (end - begin) // item_size(np_dtype)
        arr = np.frombuffer(data, dtype="<u2" if np_dtype == BF16 else np_dtype, count=numel, offset=begin)
        arr = arr.reshape(shape).astype(arr.dtype.newbyteorder("="), copy=True)
        if np_dtype == BF16:
            arr = bf16_to_float32(arr)
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
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for c in chunks:
                f.write(c)
    atomic_write(path, write)
