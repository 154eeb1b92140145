"""Start training or evaluation on every visible GPU, or on N CPU processes, through
`python -m paddle.distributed.launch`. Used by run_train_multi.sh / run_eval_multi.sh; every flag passes through.

With no flags at all, the demo job runs: the built-in demo data is written when missing, and a small ResMLP trains
on it (train) or its last checkpoint is evaluated (eval).

The method (which <method>/main_multi_gpu.py runs) is METHOD when set, else MODEL.METHOD of the -cfg file (or of
its BASE files), else the method a -resume / -pretrained checkpoint records, else the folder of the -cfg path
(configs/<method>/...), else resmlp. `-ngpus N` (PaddleViT) takes the first N visible GPUs, or on a machine
without GPUs starts N CPU processes (as NPROC=N); it is not passed on.

Environment: NPROC (CPU processes when no GPU; default 1), GPUS (devices by their CUDA_VISIBLE_DEVICES entry or by
position among the visible ones; default all visible), IPS (comma-separated node addresses for multi-node runs),
OMP_NUM_THREADS (default: cores / processes).

SIGTERM / SIGINT / SIGHUP to this process stop the whole run: Paddle's launcher, every rank and every data worker;
the exit status is then 128 + the signal. When a rank fails, its own `error:` line is repeated on the console.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = "configs/resmlp/demo.yaml"
DEMO_DATA = "demo_data"
DEMO_OUTPUT = "output/demo"


def flag_value(args, flag):
    if flag in args:
        i = args.index(flag)
        if i + 1 < len(args):
            return args[i + 1]
    return None


class LaunchError(SystemExit):
    """Bad input to the launcher: the message is printed as one `error:` line and the exit code is 2."""


def model_key_in_config(path, key, _depth=0):
    """MODEL.<key> of a yaml config, else of the files its BASE list includes (the file's own value wins, as when
    the config is merged); None when none says (a file that cannot be read is left to the trainer to report)."""
    from common.config import _read_yaml
    from common.errors import SuiteError
    try:
        data = _read_yaml(path)
    except (SuiteError, OSError) as e:
        if _depth == 0:     # the file given by -cfg itself: the launcher cannot choose a method without it
            reason = e if isinstance(e, SuiteError) else f"{path}: {e.strerror or e}"
            raise LaunchError(f"error: {reason}") from None
        return None         # a BASE file that cannot be read is left to the trainer to report, naming it
    model = data.get("MODEL")
    found = model.get(key) if isinstance(model, dict) else None
    if isinstance(found, str) and found:
        return found
    for base in reversed(data.get("BASE") or []) if _depth < 8 and isinstance(data.get("BASE"), list) else []:
        if isinstance(base, str) and base:
            found = model_key_in_config(os.path.join(os.path.dirname(os.path.abspath(path)), base), key, _depth + 1)
            if found:
                return found
    return None


def method_in_config(path):
    """MODEL.METHOD of a yaml config (a run's config.yaml records it), else the method whose registered model
    MODEL.NAME is (common/models.py); None when neither tells."""
    found = model_key_in_config(path, "METHOD")
    if found:
        return found
    name = model_key_in_config(path, "NAME")
    if not name:
        return None
    from common import models
    try:
        return models.method_of_model(name)
    except models.UnknownModelError as e:
        raise LaunchError(f"error: -cfg {path}: {e}") from None


def checkpoint_flag(args):
    """The checkpoint the run is given: -resume X (not 'auto'), else -pretrained X (extension optional)."""
    from common.checkpoint import resolve_checkpoint_path
    resume = flag_value(args, "-resume")
    path = resume if resume and resume != "auto" else flag_value(args, "-pretrained")
    return resolve_checkpoint_path(path) if path else None


def method_in_checkpoint(path):
    """The method a checkpoint of this suite records (its meta, or MODEL.METHOD of its stored config), read with
    the safe reader; None for plain weights or a file that cannot be read (the trainer reports that)."""
    from common.cli import read_stored_config, stored_method
    from common.errors import SuiteError
    if not path or not os.path.isfile(path):
        return None
    try:
        return stored_method(*read_stored_config(path))
    except (SuiteError, OSError):
        return None


def method_for(args):
    """The method folder to run (common.models.MethodInfo): METHOD, else -cfg's MODEL.METHOD or the method of its
    MODEL.NAME in the model registry, else the checkpoint's; never the config's folder name."""
    from common import models
    cfg = flag_value(args, "-cfg")
    found, source = os.environ.get("METHOD"), "METHOD"
    if not found and cfg:
        found, source = method_in_config(cfg), f"-cfg {cfg}"
    if not found:
        ckpt = checkpoint_flag(args)
        found, source = method_in_checkpoint(ckpt), f"checkpoint {ckpt}"
    if not found:
        what = f"-cfg {cfg} sets neither MODEL.METHOD nor a registered MODEL.NAME" if cfg else "no -cfg given"
        raise LaunchError(f"error: cannot tell which method to run: {what}; set MODEL.METHOD in the config (one "
                          f"of {', '.join(sorted(models.methods()))}) or METHOD=<name>")
    known = models.methods()
    if found not in known:
        broken = models.discovery_errors().get(f"{found}.method")
        raise LaunchError(f"error: {source} names method '{found}', not one of {', '.join(sorted(known))}"
                          + (f" ({found}/method.py could not be loaded: {broken})" if broken else ""))
    return known[found]


def output_of(mode, args):
    """The folder the run writes to (for the launcher's logs): -output, else the checkpoint's folder when its
    stored config stands in for -cfg, else ./output; an evaluation into a folder that holds a training run (or the
    evaluated checkpoint) writes into its eval/ subfolder (as common/runner.py decides)."""
    from common.outdir import holds_run
    out, ckpt = flag_value(args, "-output"), checkpoint_flag(args)
    if out is None and ckpt and not flag_value(args, "-cfg") and (mode == "eval" or flag_value(args, "-resume")):
        out = os.path.dirname(os.path.abspath(ckpt))
    out = out or "output"
    pretrained = flag_value(args, "-pretrained")
    if mode == "eval" and ((os.path.isdir(out) and holds_run(out)) or (
            pretrained and os.path.dirname(os.path.abspath(pretrained)) == os.path.abspath(out))):
        out = os.path.join(out, "eval")
    return out


def take_ngpus(args):
    """(args without -ngpus N, N or None)."""
    args, n = list(args), None
    for i, a in enumerate(args):
        if a == "-ngpus" or a.startswith("-ngpus="):
            value = a.partition("=")[2] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            try:
                n = int(value)
            except ValueError:
                raise LaunchError(f"error: -ngpus takes a number of processes, got '{value}'") from None
            del args[i:i + (1 if "=" in a else 2)]
            break
    return args, n


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
            raise LaunchError(f"error: no demo checkpoint at {ckpt}; run 'sh run_train_multi.sh' first")
        args = ["-cfg", cfg, "-data_path", data, "-output", output + "_eval", "-eval", "-pretrained", ckpt]
    return args


def build_command(mode, args, gpus, nproc, ips=None, method=None):
    """`method`: the MethodInfo to run (default: `method_for(args)`)."""
    script = (method or method_for(args)).script
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
        # Paddle places this node in --ips by resolving its own host name; where /etc/hosts maps that name to
        # 127.0.1.1 (Debian / Ubuntu) the address is not in the list and every node silently takes ranks 0..n-1.
        # So name the listed IPv4 address this machine holds (one a socket can bind to) as --host; POD_IP (Paddle's
        # own variable for it) or a host name in the list leaves the choice to Paddle.
        def holds(address):
            import ipaddress
            import socket
            try:
                if ipaddress.ip_address(address).version != 4:
                    return False
            except ValueError:
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((address, 0))
                    return True
                except OSError:
                    return False
        own = [a.strip() for a in ips.split(",") if holds(a.strip())]
        if own and not os.environ.get("POD_IP"):
            launch += ["--host", own[0]]
    if len(launch) > 1:
        launch += ["--log_dir", os.path.join(output_of(mode, args), "launch_logs")]
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


# Lines of Paddle's launcher (and of the ranks' C++ start-up) that a normal run's console does not need: they stay in
# <log_dir>/launcher.log. Warnings and errors (LAUNCH WARNING / ERROR, glog W/E lines) still reach the console.
NOISE = re.compile(r"^(LAUNCH INFO |I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\] |=+( Modified FLAGS detected =+)?$|"
                   r"FLAGS\(name=|WARNING: OMP_NUM_THREADS set to \d+, not 1|PLEASE USE OMP_NUM_THREADS WISELY)")
QUIET_WARNINGS = "ignore:No ccache found"


def _relay(stream, console, log):
    for raw in iter(stream.readline, b""):
        if log is not None:
            log.write(raw)
            log.flush()
        if not NOISE.match(raw.decode("utf-8", "replace")):
            console.write(raw)
            console.flush()
    stream.close()


def start_relays(proc, log_path):
    """Threads copying the child's stdout / stderr to the console, less the noise, and everything to `log_path`
    (when given)."""
    log = open(log_path, "ab") if log_path else None
    relays = [threading.Thread(target=_relay, args=(stream, console.buffer, log), daemon=True)
              for stream, console in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
    for relay in relays:
        relay.start()
    return relays


def run_child(cmd, env, log_dir=None):
    """Run the launcher / trainer and stop its whole process tree on SIGTERM / SIGINT / SIGHUP; afterwards no
    process it started is left. Returns the exit status (128 + signal when stopped by one)."""
    from common.proctree import become_subreaper, descendants, reap_children, stop_tree
    become_subreaper()
    # the child's chatter (Paddle's launcher, Paddle's import) goes to <log_dir>/launcher.log only; unbuffered, so
    # the console still shows each line as it comes
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    env = dict(env, PYTHONUNBUFFERED="1",
               PYTHONWARNINGS=",".join(filter(None, [env.get("PYTHONWARNINGS"), QUIET_WARNINGS])))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    relays = start_relays(proc, os.path.join(log_dir, "launcher.log") if log_dir else None)
    received = []

    def forward(signum, frame):
        if not received:
            received.append(signum)
            # the child itself, the ranks and their data workers (even those in sessions of their own): SIGTERM,
            # then SIGKILL after the grace time, so a rank inside one long operation (Python handles a signal only
            # between operations) cannot keep the run alive
            stop_tree(descendants(os.getpid()), grace=15.0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    for relay in relays:
        relay.join(timeout=5)
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
    try:
        return launch(argv)
    except LaunchError as e:
        print(str(e), file=sys.stderr, flush=True)
        return 2


def process_count():
    value = os.environ.get("NPROC", "1").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise LaunchError(f"error: NPROC={value} is not a positive number of CPU processes")
    return int(value)


def launch(argv=None):
    # read before anything imports paddle: its import sets OMP_NUM_THREADS=1 when the variable is absent
    requested_threads = os.environ.get("OMP_NUM_THREADS")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "eval"):
        raise LaunchError("error: usage: python -m common.launch {train|eval} [main_multi_gpu.py flags]")
    mode, args = argv[0], argv[1:]
    if not args:
        args = demo_args(mode)
    typed = list(args)
    args, ngpus = take_ngpus(args)
    gpus = visible_gpus()
    nproc = len(gpus) if gpus else process_count()
    if ngpus is not None and ngpus > 0:     # PaddleViT's -ngpus (-1 or 0: all visible)
        if gpus and ngpus > len(gpus):
            raise LaunchError(f"error: -ngpus {ngpus}: only {len(gpus)} GPU(s) are visible ({','.join(gpus)})")
        if not gpus:
            print(f"note: -ngpus {ngpus} on a machine without a usable GPU: {ngpus} CPU process(es), as NPROC={ngpus}",
                  flush=True)
        gpus, nproc = gpus[:ngpus], ngpus
    env = dict(os.environ, OMP_NUM_THREADS=worker_threads(nproc, requested_threads),
               SUITE_COMMAND=f"sh run_{mode}_multi.sh " + " ".join(shlex.quote(a) for a in typed))
    # the method folder may live outside the repository (SUITE_METHOD_PATH): its parent and the repository are
    # put on the path, so its main_multi_gpu.py imports `common` and its own package wherever it is
    method = method_for(args)
    method_root = os.path.dirname(method.folder)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
        [method_root, REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = build_command(mode, args, gpus, nproc, os.environ.get("IPS"), method)
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    log_dir = cmd[cmd.index("--log_dir") + 1] if "--log_dir" in cmd else None
    return run_child(cmd, env, log_dir)


if __name__ == "__main__":
    sys.exit(main())
