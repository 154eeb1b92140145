"""Side-by-side speed and memory of the suite and the PyTorch references, printed as a table.

    python -m bench            # every architecture, 3 interleaved rounds
    python -m bench --quick    # ResMLP-12 and ResNet-50, 1 round (a few minutes on 2 CPU cores); ends with the
                               # targets table: train, dygraph eval, predictor and peak-memory ratios per arch
    python -m bench --knobs    # each Paddle knob (threads, oneDNN, to_static, AMP bf16, allocators, predictor
                               # oneDNN) vs default
    python -m bench --archs pim_swin_t --modes eval predictor   # a subset

The PyTorch column is timm / torchvision, or the official code for Dynamic MLP (DYNAMIC_MLP_REF=checkout of
ylingfeng/DynamicMLP) and PIM (PIM_REF=checkout of chou141253/FGVC-PIM); without them those cells read n/a.
Engine overhead: the suite's Trainer against a bare loop on the same model and in-memory data (ResMLP-12, ResNet-50).

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

from bench.archs import ARCHS, ENGINE_ARCHS, QUICK, REPO
from bench.worker import KNOB_ENV

MODES = ("train", "eval", "predictor")
ENGINE_ITERS = 8


def measure(arch, framework, mode, args, knobs=(), threads=None):
    threads = threads or args.threads
    iters, warmup = args.iters, args.warmup
    if mode in ("engine", "bare"):
        # the two differ by a few percent at most: more iterations than the frameworks' comparison needs
        iters, warmup = max(iters, ENGINE_ITERS), max(warmup, 3)
    cmd = [sys.executable, "-m", "bench.worker", arch, framework, mode, "--batch", str(args.batch),
           "--iters", str(iters), "--warmup", str(warmup), "--threads", str(threads)]
    if knobs:
        cmd += ["--knobs", *knobs]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(threads))
    for knob in knobs:
        env.update(KNOB_ENV.get(knob, {}))
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


def median_ips(res):
    return None if "error" in res else statistics.median(res["images_per_s"])


def knob_study(args):
    """Each Paddle knob against the default on the same architecture, training and predictor."""
    archs = args.archs or ["resnet50", "resmlp_12"]
    trials = [("train", (), None, "default (threads = cores)"), ("train", (), 1, "1 thread (Paddle's default)"),
              ("train", ("onednn",), None, "oneDNN in dygraph"), ("train", ("to_static",), None, "to_static"),
              ("train", ("amp_bf16",), None, "AMP bf16 O1"),
              ("train", ("mkl_vendor_default",), None, "MKL's default dispatch (no AVX2 request on AMD)"),
              ("train", ("system_allocator",), None, "system allocator"),
              ("train", ("malloc_mmap_4mb",), None, "glibc mmap threshold 4 MB"),
              ("train", ("malloc_trim_0",), None, "glibc trim threshold 0"),
              ("train", ("naive_best_fit",), None, "naive_best_fit allocator"),
              ("train", ("no_stride_kernel",), None, "no stride kernels"),
              ("predictor", (), None, "predictor (oneDNN)"),
              ("predictor", ("no_onednn",), None, "predictor without oneDNN")]
    rows = []
    for arch in archs:
        base = {}
        for mode, knobs, threads, label in trials:
            res = measure(arch, "paddle", mode, args, knobs, threads)
            ips = median_ips(res)
            base.setdefault(mode, ips)
            ratio = f"{ips / base[mode]:.2f}x" if ips and base[mode] else "n/a"
            mb = f"{res['peak_rss_mb']:.0f}" if "peak_rss_mb" in res else "n/a"
            rows.append(f"| {arch} | {mode} | {label} | {f'{ips:.2f}' if ips else res['error']} | {ratio} | {mb} |")
            print(rows[-1], file=sys.stderr, flush=True)
    print("\n| arch | mode | knob | img/s | vs default | peak MB |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


# the set size the default -eval column assumes (CUB-200-2011's test split has 5,794 images, ImageNet's 50,000)
EVAL_SET = 5000


def default_eval_ips(predictor_ips, export_s, n=EVAL_SET):
    """Images/s of the default CPU -eval of n images: the export, then the predictor (the first batch, which dygraph
    scores while the predictor is checked against it, is left out: it is one batch of n)."""
    if not predictor_ips or export_s is None:
        return None
    return n / (export_s + n / predictor_ips)


def targets_table(archs, ips, mem, export_s):
    """The performance targets per architecture as Paddle / PyTorch ratios (speed: >= 1 is on par; memory: <= 1)."""
    def ratio(a, b, fmt="{:.2f}x"):
        return fmt.format(a / b) if a and b else "n/a"
    lines = ["\ntargets, Paddle / PyTorch (speed >= 1.00x and memory <= 1.00x meet them):",
             f"| arch | train speed | dygraph eval speed | predictor vs PyTorch eval | default -eval of "
             f"{EVAL_SET:,} images (export included) | peak train memory |",
             "|---|---|---|---|---|---|"]
    for arch in archs:
        cells = [ratio(ips(arch, m, "paddle")[0], ips(arch, m, "torch")[0]) for m in ("train", "eval")]
        cells.append(ratio(ips(arch, "predictor", "paddle")[0], ips(arch, "eval", "torch")[0]))
        cells.append(ratio(default_eval_ips(ips(arch, "predictor", "paddle")[0], export_s(arch)),
                           ips(arch, "eval", "torch")[0]))
        cells.append(ratio(mem(arch, "train", "paddle"), mem(arch, "train", "torch")))
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", nargs="+", default=None, choices=sorted(ARCHS))
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--knobs", action="store_true", help="measure each Paddle knob against the default instead")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="measure only these (e.g. eval predictor: skip training)")
    p.add_argument("--no-engine", action="store_true", help="skip the engine vs bare-loop overhead measurement")
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    args.iters = args.iters or (3 if args.quick else 5)
    if args.knobs:
        return knob_study(args)
    archs = args.archs or (QUICK if args.quick else list(ARCHS))
    rounds = args.rounds or (1 if args.quick else 3)

    results = {}
    engine_archs = [] if args.no_engine else [a for a in archs if a in ENGINE_ARCHS]
    for r in range(rounds):
        for arch in archs:
            jobs = [(m, fw) for m in args.modes for fw in ("paddle", "torch")
                    if not (fw == "torch" and m == "predictor")]
            if arch in engine_archs and "train" in args.modes:
                jobs += [("engine", "paddle"), ("bare", "paddle")]
            if r % 2:  # alternate the order so that both frameworks see the same machine state
                jobs = jobs[::-1]
            for mode, framework in jobs:
                res = measure(arch, framework, mode, args)
                results.setdefault((arch, mode, framework), []).append(res)
                print(f"round {r + 1} {arch} {mode} {framework}: "
                      f"{res.get('error') or '%.2f img/s' % median_ips(res)}", file=sys.stderr, flush=True)

    def ips(arch, mode, fw):
        runs = [x for x in results.get((arch, mode, fw), []) if "error" not in x]
        return summarise([median_ips(x) for x in runs])

    def mem(arch, mode, fw):
        runs = [x for x in results.get((arch, mode, fw), []) if "error" not in x]
        return max((x["peak_rss_mb"] for x in runs), default=None)

    def export_s(arch):
        runs = [x["export_s"] for x in results.get((arch, "predictor", "paddle"), []) if "export_s" in x]
        return statistics.median(runs) if runs else None

    def why(arch, fw):
        errs = [x["error"] for m in ("train", "eval") for x in results.get((arch, m, fw), []) if "error" in x]
        return errs[0] if errs else ""

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; batch {args.batch}, "
          f"{args.threads} threads, {rounds} round(s), {args.iters} timed iterations after {args.warmup} warm-up")
    head = ("| arch | ref | train img/s paddle | torch | ratio | eval img/s paddle | torch | ratio | "
            "predictor img/s paddle | ratio vs torch eval | peak MB train paddle / torch |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    missing = {}
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
        if why(arch, "torch"):
            missing[arch] = why(arch, "torch")
    for arch, reason in missing.items():
        print(f"  {arch}: no PyTorch figure: {reason}")
    print(targets_table(archs, ips, mem, export_s))
    if engine_archs:
        print("\n| arch | engine img/s (Trainer) | bare loop img/s | engine overhead |\n|---|---|---|---|")
        for arch in engine_archs:
            em, es = ips(arch, "engine", "paddle")
            bm, bs = ips(arch, "bare", "paddle")
            over = f"{100.0 * (bm / em - 1):+.1f}%" if em and bm else "n/a"
            print(f"| {arch} | {fmt(em, es)} | {fmt(bm, bs)} | {over} |")
    single, pooled, workers = data_pipeline(args)
    trains = {a: ips(a, "train", "paddle")[0] for a in archs if ips(a, "train", "paddle")[0]}
    fastest = max(trains.items(), key=lambda kv: kv[1]) if trains else None
    consumption = (f"; the fastest-training architecture ({fastest[0]}) consumes {fastest[1]:.2f} img/s -> "
                   f"{pooled / fastest[1]:.1f}x" if fastest else "")
    print(f"\ndata pipeline (decode 500x375 JPEG + RandomResizedCrop 224, flip, RandAugment, erasing): "
          f"{single:.1f} img/s in one process, {pooled:.1f} img/s with {workers} workers{consumption}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{a}|{m}|{fw}": v for (a, m, fw), v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
