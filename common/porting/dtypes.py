"""Element types shared by the torch and safetensors readers: bfloat16, which numpy lacks, and item sizes."""
import numpy as np

BF16 = "bfloat16"  # numpy has no bfloat16: such storages are held as uint16 and widened to float32 on output
MAX_DIMS = 32      # a tensor in a file with more dimensions is refused


def bf16_to_float32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def item_size(np_dtype):
    if np_dtype is None:
        return 1
    return 2 if np_dtype == BF16 else np.dtype(np_dtype).itemsize
