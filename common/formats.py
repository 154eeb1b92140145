"""What kind of weights file a path holds, read from its first bytes: shared by the Paddle checkpoint reader
(`common.checkpoint`, which must tell a damaged file from a PyTorch one) and the porting readers (`common.porting`).
Nothing here imports paddle or torch."""
import json
import os
import struct

from common.safe_pickle import CheckpointFormatError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
# the magic number as the first pickle spells it (opcode LONG1, 10 bytes, little-endian), whatever the protocol
LEGACY_MAGIC_BYTES = b"\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little", signed=True)
# paddle.save(model.state_dict(), path) (PaddleViT's .pdparams) stores Paddle's {structured name: parameter name}
# table under this key beside the tensors; it is not a weight
PADDLE_NAME_TABLE = "StructuredToParameterName@@"


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
        if LEGACY_MAGIC_BYTES in head[:40]:
            return "torch_legacy"
        if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
            return "pickle"
    return "unknown"


def safetensors_header(f, file_size):
    """(header dict, offset of the data section) of an open ``.safetensors`` file of `file_size` bytes: an 8-byte
    little-endian length, then that many bytes of JSON; the length is checked against the file before reading."""
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
    except RecursionError:
        raise CheckpointFormatError("safetensors header nests too deeply") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError("safetensors header is not a JSON object")
    return header, 8 + n
