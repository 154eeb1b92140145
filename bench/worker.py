"""One measurement in a fresh process (so that peak memory belongs to it alone); prints one JSON line.

python -m bench.worker ARCH FRAMEWORK MODE --batch 16 --iters 5 --warmup 2 --threads N
MODE: train (forward + backward + SGD step), eval (no-grad forward), predictor (Paddle: the exported model in
paddle.inference; PyTorch: eval mode again, its eager path being its deployment default here), engine / bare (Paddle
only: the suite's Trainer vs a bare training loop on the same model and in-memory data).
"""
import argparse
import ctypes
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

from bench.archs import ARCHS

# Paddle knobs the benchmark can switch on (python -m bench --knobs measures each against the default)
KNOBS = {
    "onednn": "dygraph with oneDNN kernels (FLAGS_use_mkldnn)",
    "to_static": "training step through paddle.jit.to_static (dynamic-to-static graph)",
    "amp_bf16": "AMP bfloat16 O1 autocast",
    "no_onednn": "predictor without oneDNN (plain CPU kernels)",
    "system_allocator": "malloc/free instead of Paddle's caching allocator (FLAGS_use_system_allocator)",
    "mkl_vendor_default": "MKL's default dispatch on AMD (the suite sets MKL_DEBUG_CPU_TYPE=5 there: AVX2 kernels)",
    "malloc_mmap_4mb": "glibc's mmap threshold fixed at 4 MB (MALLOC_MMAP_THRESHOLD_=4194304): freed activations "
                       "go back to the system instead of staying in the heap",
    "naive_best_fit": "Paddle's older best-fit allocator (FLAGS_allocator_strategy=naive_best_fit)",
    "malloc_trim_0": "glibc trims the heap top at every free (MALLOC_TRIM_THRESHOLD_=0)",
    "no_stride_kernel": "Paddle's dense transpose/slice kernels instead of strided views (FLAGS_use_stride_kernel=0)",
    "glibc_default_mmap": "glibc's own, moving mmap threshold (the suite fixes it at 32 MB: large activations reused "
                          "from the heap instead of mapped and unmapped every step)",
    "trim_each_step": "glibc's free heap pages returned to the system after every optimizer step (malloc_trim(0))",
    "zeroed_grads": "gradients kept allocated and zeroed between steps (Paddle's clear_grad() default) instead of "
                    "released as the suite's Trainer and PyTorch's zero_grad() do",
}
# knobs that are environment variables of the measured process (read by the C library at start-up)
KNOB_ENV = {"malloc_mmap_4mb": {"MALLOC_MMAP_THRESHOLD_": "4194304"},
            "naive_best_fit": {"FLAGS_allocator_strategy": "naive_best_fit"},
            "malloc_trim_0": {"MALLOC_TRIM_THRESHOLD_": "0"}}


MEASURED = {}   # figures a mode measures besides its step times (predictor: export_s), added to the JSON line


def _outputs(out):
    if isinstance(out, dict):
        return [v for v in out.values() if hasattr(v, "shape")]
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


def _timed(step, iters, warmup):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _apply_paddle_knobs(knobs):
    import paddle
    if "onednn" in knobs:
        paddle.set_flags({"FLAGS_use_mkldnn": True})
    if "system_allocator" in knobs:
        paddle.set_flags({"FLAGS_use_system_allocator": True})
    if "no_stride_kernel" in knobs:
        paddle.set_flags({"FLAGS_use_stride_kernel": False})


def _deployed(model, head=None):
    """The model as exported for deployment: one output, the logits of its main head (a dict key) or its first."""
    import paddle.nn as nn

    class Deployed(nn.Layer):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image, extra0=None):
            out = self.model(image) if extra0 is None else self.model(image, extra0)
            return out[head] if head else _outputs(out)[0]
    return Deployed()


def _paddle_inputs(spec, batch):
    import paddle
    size = spec["size"]
    x = paddle.to_tensor(np.random.rand(batch, 3, size, size).astype("float32"))
    extras = [paddle.to_tensor(e) for e in spec.get("extras", lambda b: [])(batch)]
    return x, extras


def paddle_cpu_setup(threads, knobs):
    """What the suite's runner does for a CPU process: math threads, MKL's AVX2 path on AMD, activations kept on
    glibc's heap. Every Paddle measurement of the benchmark (worker, profile_step, ab_step, op_gap) starts with it:
    without the heap setting each large output is a fresh mapping, page-faulted in per call (Paddle's gelu_grad on
    [3136, 1536] on 2 Intel Xeon cores: 70-100 ms per call without, 12-22 ms with)."""
    from paddle.base import core

    from common.dist import keep_activations_on_the_heap, prefer_fast_mkl_on_amd
    if "mkl_vendor_default" in knobs:
        os.environ.pop("MKL_DEBUG_CPU_TYPE", None)
    else:
        prefer_fast_mkl_on_amd()
    if "glibc_default_mmap" not in knobs:
        keep_activations_on_the_heap()
    core.set_num_threads(threads)


def run_paddle(arch, mode, batch, iters, warmup, threads, knobs=()):
    import paddle
    paddle_cpu_setup(threads, knobs)
    paddle.set_device("cpu")
    _apply_paddle_knobs(knobs)
    spec = ARCHS[arch]
    size = spec["size"]
    model = spec["paddle"](1000)
    x, extras = _paddle_inputs(spec, batch)
    if mode == "train":
        model.train()
        opt = paddle.optimizer.Momentum(learning_rate=1e-4, momentum=0.9, parameters=model.parameters())
        forward = paddle.jit.to_static(model, full_graph=False) if "to_static" in knobs else model
        amp = "amp_bf16" in knobs
        trim = ctypes.CDLL("libc.so.6").malloc_trim if "trim_each_step" in knobs else None

        def step():
            with paddle.amp.auto_cast(enable=amp, dtype="bfloat16", level="O1"):
                outs = _outputs(forward(x, *extras))
            loss = sum(o.astype("float32").mean() for o in outs)
            loss.backward()
            opt.step()
            opt.clear_grad(set_to_zero="zeroed_grads" in knobs)   # released, as the Trainer does
            if trim is not None:
                trim(0)
    elif mode == "eval":
        model.eval()

        def step():
            with paddle.no_grad():
                _outputs(model(x, *extras))[0].numpy()
    else:
        from common.deploy import create_predictor
        from common.export import save_graph
        model.eval()
        export_start = time.perf_counter()
        folder = tempfile.mkdtemp(prefix="bench_export_")
        specs = [paddle.static.InputSpec([None, 3, size, size], "float32")]
        specs += [paddle.static.InputSpec([None] + list(shape), "float32") for shape in spec.get("extra_shapes", [])]
        graph, params = save_graph(_deployed(model, spec.get("head")), specs, folder)
        predictor = create_predictor(graph, params, threads, onednn="no_onednn" not in knobs)
        shutil.rmtree(folder, ignore_errors=True)   # the predictor holds the model in memory
        MEASURED["export_s"] = time.perf_counter() - export_start   # what -eval pays once before the predictor runs
        arrays = [x.numpy()] + [e.numpy() for e in extras]
        handles = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
        out = predictor.get_output_handle(predictor.get_output_names()[0])

        def step():
            for h, a in zip(handles, arrays):
                h.reshape(a.shape)
                h.copy_from_cpu(a)
            predictor.run()
            out.copy_to_cpu()
    return _timed(step, iters, warmup)


class _SyntheticImages:
    """In-memory (image, label) pairs: the engine and the bare loop read identical data with no decoding."""

    def __init__(self, n, size, seed=0):
        rng = np.random.RandomState(seed)
        self.images = [rng.rand(3, size, size).astype("float32") for _ in range(4)]
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.images[i % 4], np.int64(i % 1000)

    def set_epoch(self, epoch):
        pass


def _forward_clock(fn, stamps):
    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        return fn(*args, **kwargs)
    return timed


def run_engine(arch, mode, batch, iters, warmup, threads, knobs=()):
    """Training images/s of the suite's Trainer ('engine') or of a bare loop ('bare') on the same model, data
    loader, optimizer (SGD momentum 0.9, no weight decay) and loss; per-iteration times are the gaps between
    successive forward calls, so every cost between two steps counts."""
    import paddle
    import paddle.nn.functional as F
    paddle_cpu_setup(threads, knobs)
    paddle.set_device("cpu")
    spec = ARCHS[arch]
    n_batches = warmup + iters + 1
    dataset = _SyntheticImages(n_batches * batch, spec["size"])
    model = spec["paddle"](1000)
    stamps = []
    if mode == "engine":
        from common.config import get_default_config
        from common.engine.trainer import Trainer
        from common.logger import ScalarWriter
        from common.method import ClassificationMethod

        class Bench(ClassificationMethod):
            name = "bench"

        cfg = get_default_config()
        cfg.defrost()
        cfg.DATA.BATCH_SIZE, cfg.DATA.NUM_WORKERS, cfg.MODEL.NUM_CLASSES = batch, 0, 1000
        cfg.AUG.MIXUP_PROB, cfg.TRAIN.SMOOTHING, cfg.TRAIN.WEIGHT_DECAY = 0.0, 0.0, 0.0
        cfg.TRAIN.OPTIMIZER.NAME, cfg.TRAIN.OPTIMIZER.MOMENTUM = "SGD", 0.9
        cfg.TRAIN.BASE_LR, cfg.TRAIN.LINEAR_SCALED_LR, cfg.TRAIN.WARMUP_EPOCHS = 1e-4, 0, 0
        cfg.TRAIN.EPOCHS, cfg.REPORT_FREQ = 1, 10 ** 6
        cfg.freeze()
        method = Bench()
        model.forward = _forward_clock(model.forward, stamps)   # the engine calls the model itself
        import logging
        trainer = Trainer(cfg, method, model, tempfile.mkdtemp(prefix="bench_engine_"), logging.getLogger("bench"),
                          "cpu")
        trainer.setup(dataset, None)
        trainer.writer = ScalarWriter(None, False)
        trainer.train_one_epoch(1)
    else:
        from common.engine.trainer import build_loader
        from common.data.samplers import TrainBatchSampler
        loader = build_loader(dataset, TrainBatchSampler(len(dataset), batch, seed=0), 0)
        opt = paddle.optimizer.Momentum(learning_rate=1e-4, momentum=0.9, parameters=model.parameters())
        forward = _forward_clock(model, stamps)
        model.train()
        for images, labels in loader:
            loss = F.cross_entropy(forward(images), labels)
            loss.backward()
            opt.step()
            opt.clear_grad(set_to_zero=False)   # as the Trainer
            float(loss)
    gaps = np.diff(stamps)
    return list(gaps[warmup:warmup + iters])


def run_torch(arch, mode, batch, iters, warmup, threads, knobs=()):
    import torch
    torch.set_num_threads(threads)
    spec = ARCHS[arch]
    size = spec["size"]
    model = spec["torch"](1000)
    x = torch.from_numpy(np.random.rand(batch, 3, size, size).astype("float32"))
    extras = [torch.from_numpy(e) for e in spec.get("extras", lambda b: [])(batch)]
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            loss = sum(o.float().mean() for o in _outputs(model(x, *extras)))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.no_grad():
                _outputs(model(x, *extras))[0].numpy()
    return _timed(step, iters, warmup)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("arch", choices=sorted(ARCHS))
    p.add_argument("framework", choices=["paddle", "torch"])
    p.add_argument("mode", choices=["train", "eval", "predictor", "engine", "bare"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--knobs", nargs="*", default=[], choices=sorted(KNOBS))
    a = p.parse_args(argv)
    if a.mode in ("engine", "bare"):
        run = run_engine
    else:
        run = run_paddle if a.framework == "paddle" else run_torch
    times = run(a.arch, a.mode, a.batch, a.iters, a.warmup, a.threads, tuple(a.knobs))
    ips = [a.batch / t for t in times]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"arch": a.arch, "framework": a.framework, "mode": a.mode, "images_per_s": ips,
                      "peak_rss_mb": peak_mb, **MEASURED}))


if __name__ == "__main__":
    sys.exit(main())
