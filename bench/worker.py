"""One measurement in a fresh process (so that peak memory belongs to it alone); prints one JSON line.

python -m bench.worker ARCH FRAMEWORK MODE --batch 16 --iters 5 --warmup 2 --threads N
MODE: train (forward + backward + SGD step), eval (no-grad forward), predictor (Paddle: the exported model in
paddle.inference; PyTorch: eval mode again, its eager path being its deployment default here).
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

from bench.archs import ARCHS


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


def run_paddle(arch, mode, batch, iters, warmup, threads):
    import paddle
    from paddle.base import core
    core.set_num_threads(threads)
    paddle.set_device("cpu")
    spec = ARCHS[arch]
    size = spec["size"]
    model = spec["paddle"](1000)
    x = paddle.to_tensor(np.random.rand(batch, 3, size, size).astype("float32"))
    if mode == "train":
        model.train()
        opt = paddle.optimizer.Momentum(learning_rate=1e-4, momentum=0.9, parameters=model.parameters())

        def step():
            loss = sum(o.astype("float32").mean() for o in _outputs(model(x)))
            loss.backward()
            opt.step()
            opt.clear_grad()
    elif mode == "eval":
        model.eval()

        def step():
            with paddle.no_grad():
                _outputs(model(x))[0].numpy()
    else:
        from paddle import inference
        model.eval()
        folder = tempfile.mkdtemp(prefix="bench_export_")
        static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([None, 3, size, size], "float32")],
                                      full_graph=True)
        paddle.jit.save(static, os.path.join(folder, "model"))
        graph = os.path.join(folder, "model.json")
        cfg = inference.Config(graph if os.path.exists(graph) else os.path.join(folder, "model.pdmodel"),
                               os.path.join(folder, "model.pdiparams"))
        cfg.disable_gpu()
        cfg.disable_glog_info()
        cfg.set_cpu_math_library_num_threads(threads)
        cfg.enable_mkldnn()
        predictor = inference.create_predictor(cfg)
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        out = predictor.get_output_handle(predictor.get_output_names()[0])
        arr = x.numpy()

        def step():
            handle.reshape(arr.shape)
            handle.copy_from_cpu(arr)
            predictor.run()
            out.copy_to_cpu()
    return _timed(step, iters, warmup)


def run_torch(arch, mode, batch, iters, warmup, threads):
    import torch
    torch.set_num_threads(threads)
    spec = ARCHS[arch]
    size = spec["size"]
    model = spec["torch"](1000)
    x = torch.from_numpy(np.random.rand(batch, 3, size, size).astype("float32"))
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            loss = sum(o.float().mean() for o in _outputs(model(x)))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.no_grad():
                _outputs(model(x))[0].numpy()
    return _timed(step, iters, warmup)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("arch", choices=sorted(ARCHS))
    p.add_argument("framework", choices=["paddle", "torch"])
    p.add_argument("mode", choices=["train", "eval", "predictor"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    run = run_paddle if a.framework == "paddle" else run_torch
    times = run(a.arch, a.mode, a.batch, a.iters, a.warmup, a.threads)
    ips = [a.batch / t for t in times]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"arch": a.arch, "framework": a.framework, "mode": a.mode, "images_per_s": ips,
                      "peak_rss_mb": peak_mb}))


if __name__ == "__main__":
    sys.exit(main())
