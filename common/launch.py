"""Start training or evaluation on every visible GPU, or on N CPU processes, through
`python -m paddle.distributed.launch`. Used by run_train_multi.sh / run_eval_multi.sh; every flag passes through.

With no flags at all, the demo job runs: the built-in demo data is written when missing, and a small ResMLP trains
on it (train) or its last checkpoint is evaluated (eval).

Environment: NPROC (CPU processes when no GPU; default 1), GPUS (devices by their CUDA_VISIBLE_DEVICES entry or by
position among the visible ones; default all visible), IPS (comma-separated node addresses for multi-node runs),
OMP_NUM_THREADS (default: cores / processes).

SIGTERM / SIGINT / SIGHUP to this process stop the whole run: Paddle's launcher, every rank and every data worker;
the exit status is then 128 + the signal. When a rank fails, its own `error:` line is repeated on the console.
"""
import os
import shlex
import signal
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


class LaunchError(SystemExit):
    pass


def visible_labels(cvd, count):
    """The device labels Paddle's launcher accepts for --gpus: the entries of CUDA_VISIBLE_DEVICES when it is set
    (a scheduler's '2,3', or UUIDs), else 0..count-1."""
    if cvd is not None and cvd.strip() not in ("", "all"):
        return [d.strip() for d in cvd.split(",") if d.strip()][:count] or list(map(str, range(count)))
    return list(map(str, range(count)))


def select_gpus(gpus_env, cvd, count):
    """Device labels to pass as --gpus. GPUS, when set, names devices by their CUDA_VISIBLE_DEVICES entry (what
    nvidia-smi and the scheduler call them) or, failing that, by position among the visible devices."""
    labels = visible_labels(cvd, count)
    if not gpus_env or not gpus_env.strip():
        return labels
    wanted = [g.strip() for g in gpus_env.split(",") if g.strip()]
    if all(g in labels for g in wanted):
        return wanted
    if all(g.isdigit() and int(g) < len(labels) for g in wanted):
        return [labels[int(g)] for g in wanted]
    raise LaunchError(f"error: GPUS={gpus_env} names devices that are not visible; the visible devices are "
                      f"{','.join(labels)} (CUDA_VISIBLE_DEVICES={cvd if cvd is not None else 'unset'})")


def visible_gpus():
    try:
        import paddle
        if not paddle.is_compiled_with_cuda():
            if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"):
                print("note: this machine has an NVIDIA GPU but the installed Paddle is the CPU build, so the run uses "
                      "the CPU; for the GPU install paddlepaddle-gpu (README, 'GPU install')", file=sys.stderr)
            return []
        count = paddle.device.cuda.device_count()
    except Exception:
        return []
    if count == 0:
        return []
    return select_gpus(os.environ.get("GPUS"), os.environ.get("CUDA_VISIBLE_DEVICES"), count)


def demo_args(mode):
    from common.demo_data import make_demo_data
    make_demo_data(os.path.join(REPO, DEMO_DATA))
    cfg, data, output = (os.path.join(REPO, p) for p in (DEMO_CFG, DEMO_DATA, DEMO_OUTPUT))
    # a second run of the demo continues the first one (and says so when it already finished)
    args = ["-cfg", cfg, "-data_path", data, "-output", output, "-resume", "auto"]
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


def worker_error_lines(log_dir):
    """The `error:` lines the ranks wrote to their logs (Paddle's launcher keeps rank r's output in workerlog.r)."""
    lines = []
    if not log_dir or not os.path.isdir(log_dir):
        return lines
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("workerlog."):
            continue
        try:
            with open(os.path.join(log_dir, name), "r", encoding="utf-8", errors="replace") as f:
                found = [line.rstrip("\n") for line in f if line.startswith("error:")]
        except OSError:
            continue
        if found:
            lines.append((name.split(".", 1)[1], found[0]))
    return lines


def run_child(cmd, env, log_dir=None):
    """Run the launcher / trainer and stop its whole process tree on SIGTERM / SIGINT / SIGHUP; afterwards no
    process it started is left. Returns the exit status (128 + signal when stopped by one)."""
    from common.proctree import become_subreaper, descendants, reap_children, stop_tree
    become_subreaper()
    proc = subprocess.Popen(cmd, env=env)
    received = []

    def forward(signum, frame):
        if not received:
            received.append(signum)
            members = descendants(proc.pid)
            try:
                proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
            # the ranks and their data workers, even those in sessions of their own
            stop_tree(members, grace=15.0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    # anything the run left behind was adopted by this process (a subreaper): stop it and collect it
    members = descendants(os.getpid())
    if members:
        stop_tree(members, grace=5.0)
    reap_children()
    if received:
        print(f"error: stopped by {signal.Signals(received[0]).name}; every process of the run was ended",
              file=sys.stderr, flush=True)
        return 128 + received[0]
    if code != 0 and log_dir:
        for rank, line in worker_error_lines(log_dir):
            print(f"{line} (rank {rank}; full log: {os.path.join(log_dir, 'workerlog.' + rank)})",
                  file=sys.stderr, flush=True)
    return code if code >= 0 else 128 - code


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
    env = dict(os.environ, OMP_NUM_THREADS=worker_threads(nproc, requested_threads),
               SUITE_COMMAND=f"sh run_{mode}_multi.sh " + " ".join(shlex.quote(a) for a in args))
    cmd = build_command(mode, args, gpus, nproc, os.environ.get("IPS"))
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    log_dir = cmd[cmd.index("--log_dir") + 1] if "--log_dir" in cmd else None
    return run_child(cmd, env, log_dir)


if __name__ == "__main__":
    sys.exit(main())
