"""Start training or evaluation on every visible GPU, or on N CPU processes, through
`python -m paddle.distributed.launch`. Used by run_train_multi.sh / run_eval_multi.sh; every flag passes through.

With no flags at all, the demo job runs: the built-in demo data is written when missing, and a small ResMLP trains
on it (train) or its last checkpoint is evaluated (eval).

Environment: NPROC (CPU processes when no GPU; default 1), GPUS (ids, default all visible), IPS (comma-separated
node addresses for multi-node runs), OMP_NUM_THREADS (default: cores / processes).
"""
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("resmlp", "dynamic_mlp", "pim", "transfer")
DEMO_CFG = "configs/resmlp/demo.yaml"
DEMO_DATA = "demo_data"
DEMO_OUTPUT = "output/demo"


def flag_value(args, flag):
    if flag in args:
        i = args.index(flag)
        if i + 1 < len(args):
            return args[i + 1]
    return None


def method_of(cfg_path):
    """configs/<method>/x.yaml -> <method>; a method name anywhere in the path also counts."""
    parts = os.path.normpath(cfg_path).split(os.sep)
    for part in reversed(parts[:-1]):
        if part in METHODS:
            return part
    raise SystemExit(f"error: cannot tell the method from config path '{cfg_path}' (expected "
                     f"configs/<{'|'.join(METHODS)}>/...); set METHOD=<name>")


def visible_gpus():
    ids = os.environ.get("GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import paddle
        if not paddle.is_compiled_with_cuda():
            return []
        count = paddle.device.cuda.device_count()
    except Exception:
        return []
    if count == 0:
        return []
    if ids:
        return [i for i in ids.split(",") if i.strip()][:count] if os.environ.get("GPUS") else list(
            map(str, range(count)))
    return list(map(str, range(count)))


def demo_args(mode):
    from common.demo_data import make_demo_data
    make_demo_data(os.path.join(REPO, DEMO_DATA))
    cfg, data, output = (os.path.join(REPO, p) for p in (DEMO_CFG, DEMO_DATA, DEMO_OUTPUT))
    args = ["-cfg", cfg, "-data_path", data, "-output", output]
    if mode == "eval":
        ckpt = os.path.join(output, "last.pdparams")
        if not os.path.isfile(ckpt):
            raise SystemExit(f"error: no demo checkpoint at {ckpt}; run 'sh run_train_multi.sh' first")
        args = ["-cfg", cfg, "-data_path", data, "-output", output + "_eval", "-eval", "-pretrained", ckpt]
    return args


def build_command(mode, args, gpus, nproc, ips=None):
    cfg = flag_value(args, "-cfg")
    method = os.environ.get("METHOD") or (method_of(cfg) if cfg else "resmlp")
    script = os.path.join(REPO, method, "main_multi_gpu.py")
    if mode == "eval" and "-eval" not in args:
        args = args + ["-eval"]
    if gpus:
        launch = [sys.executable, "-m", "paddle.distributed.launch", "--gpus", ",".join(gpus)]
    elif nproc > 1 or ips:
        launch = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc)]
    else:
        launch = [sys.executable]
    if ips and len(launch) > 1:
        launch += ["--ips", ips]
    if len(launch) > 1:
        launch += ["--log_dir", os.path.join(flag_value(args, "-output") or "output", "launch_logs")]
    return launch + [script] + list(args)


def worker_threads(nproc, requested=None):
    """OMP_NUM_THREADS for every worker: the user's value when set, else the usable cores shared by the processes
    (Paddle on CPU uses one thread unless told)."""
    if requested and requested.strip():
        return requested.strip()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return str(max(1, cores // nproc))


def main(argv=None):
    # read before anything imports paddle: its import sets OMP_NUM_THREADS=1 when the variable is absent
    requested_threads = os.environ.get("OMP_NUM_THREADS")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "eval"):
        raise SystemExit("usage: python -m common.launch {train|eval} [main_multi_gpu.py flags]")
    mode, args = argv[0], argv[1:]
    if not args:
        args = demo_args(mode)
    gpus = visible_gpus()
    nproc = len(gpus) if gpus else max(1, int(os.environ.get("NPROC", "1")))
    env = dict(os.environ, OMP_NUM_THREADS=worker_threads(nproc, requested_threads))
    cmd = build_command(mode, args, gpus, nproc, os.environ.get("IPS"))
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
