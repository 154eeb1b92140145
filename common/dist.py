"""Process-group helpers. One process per GPU (NCCL) or N CPU processes (gloo), started by
`python -m paddle.distributed.launch`; a plain `python main_multi_gpu.py` is a world of one."""
import os
import platform

import numpy as np
import paddle
import paddle.distributed as dist

_initialised = False


def world_size():
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def rank():
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def is_main():
    return rank() == 0


def setup_device():
    """GPU when Paddle was built with CUDA and one is visible, else CPU; returns the device string."""
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        # the device the launcher selected for this process (e.g. GPUS=3 with one process: not GPU 0)
        local = int(os.environ.get("FLAGS_selected_gpus", os.environ.get("PADDLE_LOCAL_RANK", "0")).split(",")[0])
        device = f"gpu:{local}"
    else:
        device = "cpu"
    paddle.set_device(device)
    return device


def cpu_threads():
    """Math threads for one CPU process: OMP_NUM_THREADS when the user (or the launcher: cores / processes) set it
    before Paddle was imported, else the cores this process may use divided by the processes on this node."""
    import common
    env = (common.USER_OMP_NUM_THREADS or "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("PADDLE_LOCAL_SIZE", os.environ.get("PADDLE_TRAINERS_NUM", "1")) or 1)
    return max(1, cores // max(1, local))


def cpu_vendor():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def prefer_fast_mkl_on_amd():
    """Paddle's CPU GEMM is Intel MKL (mklml), which runs a slow generic code path on AMD processors unless
    MKL_DEBUG_CPU_TYPE=5 asks for its AVX2 kernels: a 3136x384x1536 product goes from 116 to 55 ms on one EPYC core.
    MKL reads the variable at its first call, so this must run before any training or inference. Left alone when
    the user set it, and on other vendors. Returns whether it is in effect."""
    if "MKL_DEBUG_CPU_TYPE" not in os.environ and cpu_vendor() == "AuthenticAMD":
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
    return os.environ.get("MKL_DEBUG_CPU_TYPE") == "5"


# glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX); M_MMAP_THRESHOLD is mallopt's -3
HEAP_UP_TO = 32 * 1024 * 1024
_M_MMAP_THRESHOLD = -3
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
              "GLIBC_TUNABLES")


def keep_activations_on_the_heap():
    """Paddle's CPU tensors come from glibc's malloc, which serves blocks above its mmap threshold (128 KB at start,
    raised as such blocks are freed) with fresh mappings: every step's large activations (ResMLP-24 at batch 16:
    19 MB each) are then mapped, page-faulted in and unmapped again. Fixed at glibc's largest threshold (32 MB), they
    are reused from the heap: measured on 2 Intel Xeon cores, ResMLP-24 training 2.96 -> 4.66 img/s, ResMLP-12 6.98 ->
    9.41, ResNet-50 4.35 -> 4.59, for 1-9% more peak memory (README, Benchmark). Left alone when the user set any
    of glibc's malloc variables, and off glibc. Returns whether it is in effect."""
    if any(k in os.environ for k in MALLOC_ENV) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, HEAP_UP_TO) == 1
    except (OSError, AttributeError):
        return False


def set_cpu_threads():
    """Paddle's CPU kernels use one thread unless told; give this process its share of the cores (and MKL's fast
    path on AMD, see prefer_fast_mkl_on_amd; glibc's heap for the activations, see keep_activations_on_the_heap)."""
    prefer_fast_mkl_on_amd()
    keep_activations_on_the_heap()
    n = cpu_threads()
    paddle.base.core.set_num_threads(n)
    return n


def init():
    """Join the process group when launched with more than one process."""
    global _initialised
    if world_size() > 1 and not _initialised:
        dist.init_parallel_env()
        _initialised = True


def _all_reduce(values, op):
    arr = np.asarray(values, dtype="float64")
    if world_size() == 1:
        return arr
    t = paddle.to_tensor(arr)
    dist.all_reduce(t, op=op)
    return t.numpy()


def all_reduce_sum(values):
    """Sum a float64 numpy vector over ranks (exact for counts below 2**53)."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values):
    return _all_reduce(values, dist.ReduceOp.MAX)


def all_gather_object(obj):
    """Every rank's (picklable) `obj`, in rank order."""
    if world_size() == 1:
        return [obj]
    gathered = []
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_rank0(tensors):
    """Overwrite every rank's copy of `tensors` with rank 0's (in place)."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.broadcast(t, src=0)


def barrier():
    if world_size() > 1:
        dist.barrier()
