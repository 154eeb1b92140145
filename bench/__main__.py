"""Side-by-side speed and memory of the suite and the PyTorch references, printed as a table.

    python -m bench            # every architecture, 3 interleaved rounds
    python -m bench --quick    # ResMLP-12 and ResNet-50, 1 round (a few minutes on 2 CPU cores)

Each figure is measured in a fresh process (peak RSS is that process's), after warm-up iterations; rounds alternate
Paddle and PyTorch so that both see the same machine state. Reported: median images/s and the spread (min-max) over
rounds, and the ratio Paddle / PyTorch (> 1: Paddle is faster; for memory, < 1: Paddle uses less).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from bench.archs import ARCHS, QUICK, REPO

MODES = ("train", "eval", "predictor")


def measure(arch, framework, mode, args):
    cmd = [sys.executable, "-m", "bench.worker", arch, framework, mode, "--batch", str(args.batch),
           "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]}


def data_pipeline(args):
    """Decode + training transforms of 500x375 JPEGs: images/s in one process and through the DataLoader."""
    import numpy as np
    from PIL import Image

    from common.config import get_default_config
    from common.data.datasets import ImageDataset, Sample
    from common.data.samplers import TrainBatchSampler
    from common.data.transforms import build_train_transform
    from common.engine.trainer import build_loader

    folder = tempfile.mkdtemp(prefix="bench_data_")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(64):
        arr = (rng.random((375, 500, 3)) * 64 + np.linspace(0, 180, 500)[None, :, None]).astype("uint8")
        path = os.path.join(folder, f"{i}.jpg")
        Image.fromarray(arr).save(path, quality=90)
        samples.append(Sample(path, i % 10))
    cfg = get_default_config()  # the ImageNet recipe's transforms: RRC 224 bicubic, flip, RandAugment, erasing
    ds = ImageDataset(samples, build_train_transform(cfg), train=True)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    single = len(ds) / (time.perf_counter() - t)
    workers = cfg.DATA.NUM_WORKERS
    loader = build_loader(ds, TrainBatchSampler(len(ds), 16, seed=0), workers)
    t = time.perf_counter()
    n = sum(int(b[0].shape[0]) for b in loader)
    pooled = n / (time.perf_counter() - t)
    return single, pooled, workers


def summarise(values):
    if not values:
        return None, None
    return statistics.median(values), (min(values), max(values))


def fmt(med, spread):
    if med is None:
        return "n/a"
    return f"{med:.2f} ({spread[0]:.2f}-{spread[1]:.2f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", nargs="+", default=None, choices=sorted(ARCHS))
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    archs = args.archs or (QUICK if args.quick else list(ARCHS))
    rounds = args.rounds or (1 if args.quick else 3)
    args.iters = args.iters or (3 if args.quick else 5)

    results = {}
    for r in range(rounds):
        for arch in archs:
            for mode in MODES:
                for framework in (("paddle", "torch") if r % 2 == 0 else ("torch", "paddle")):
                    if framework == "torch" and mode == "predictor":
                        continue  # PyTorch's deployment path here is its eager eval, measured as 'eval'
                    res = measure(arch, framework, mode, args)
                    results.setdefault((arch, mode, framework), []).append(res)
                    print(f"round {r + 1} {arch} {mode} {framework}: "
                          f"{res.get('error') or '%.2f img/s' % statistics.median(res['images_per_s'])}",
                          file=sys.stderr, flush=True)

    def ips(arch, mode, fw):
        runs = [x for x in results.get((arch, mode, fw), []) if "error" not in x]
        return summarise([statistics.median(x["images_per_s"]) for x in runs])

    def mem(arch, mode, fw):
        runs = [x for x in results.get((arch, mode, fw), []) if "error" not in x]
        return max((x["peak_rss_mb"] for x in runs), default=None)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; batch {args.batch}, "
          f"{args.threads} threads, {rounds} round(s), {args.iters} timed iterations after {args.warmup} warm-up")
    head = ("| arch | ref | train img/s paddle | torch | ratio | eval img/s paddle | torch | ratio | "
            "predictor img/s paddle | ratio vs torch eval | peak MB train paddle / torch |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for arch in archs:
        row = [arch, ARCHS[arch]["reference"]]
        for mode in ("train", "eval"):
            pm, ps = ips(arch, mode, "paddle")
            tm, ts = ips(arch, mode, "torch")
            row += [fmt(pm, ps), fmt(tm, ts), f"{pm / tm:.2f}x" if pm and tm else "n/a"]
        pm, ps = ips(arch, "predictor", "paddle")
        tm, _ = ips(arch, "eval", "torch")
        row += [fmt(pm, ps), f"{pm / tm:.2f}x" if pm and tm else "n/a"]
        mp, mt = mem(arch, "train", "paddle"), mem(arch, "train", "torch")
        row.append(f"{mp:.0f} / {mt:.0f}" if mp and mt else "n/a")
        print("| " + " | ".join(row) + " |")
    single, pooled, workers = data_pipeline(args)
    train_r50, _ = ips("resnet50", "train", "paddle") if "resnet50" in archs else (None, None)
    consumption = f"; ResNet-50 training consumes {train_r50:.2f} img/s -> {pooled / train_r50:.1f}x" if train_r50 else ""
    print(f"\ndata pipeline (decode 500x375 JPEG + RandomResizedCrop 224, flip, RandAugment, erasing): "
          f"{single:.1f} img/s in one process, {pooled:.1f} img/s with {workers} workers{consumption}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{a}|{m}|{fw}": v for (a, m, fw), v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
