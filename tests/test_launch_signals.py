"""The launcher's process tree: a signal stops every process of the run, a failing rank ends the run and its own
error line reaches the console."""
import os
import signal
import subprocess
import sys
import time

import pytest

from common import launch
from common.proctree import alive, descendants
from tests.helpers import REPO, TINY_RESMLP, env

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")


def wait_for(predicate, timeout, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_the_demo_resumes_instead_of_overwriting(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "REPO", str(tmp_path))
    os.makedirs(tmp_path / "configs" / "resmlp")
    args = launch.demo_args("train")
    assert args[args.index("-resume") + 1] == "auto"


def test_sigterm_to_the_launcher_stops_every_process_of_the_run(small_demo, tmp_path):
    out = str(tmp_path / "run")
    cmd = ["sh", "run_train_multi.sh", "-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out, "-batch_size", "8",
           "-opts", *TINY_RESMLP, "DATA.NUM_WORKERS", "1", "TRAIN.EPOCHS", "500"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(NPROC=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        log0 = os.path.join(out, "log.txt")
        assert wait_for(lambda: os.path.exists(log0) and "iter" in open(log0).read(), 300), "training never started"
        # Paddle's launcher, two ranks and a data worker each (workers start with each epoch's first batch)
        seen = {}
        assert wait_for(lambda: seen.update(descendants(proc.pid)) or len(seen) >= 5, 60, step=0.05), seen
        members = list(seen.items())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err
    assert wait_for(lambda: not any(alive(p, s) for p, s in members), 10), \
        [p for p, s in members if alive(p, s)]
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_a_failing_rank_ends_the_run_and_its_error_reaches_the_console(small_demo, tmp_path):
    import shutil
    data = str(tmp_path / "data")
    shutil.copytree(small_demo, data)
    with open(os.path.join(data, "val_list.txt")) as f:
        lines = [line for line in f if line.strip()]
    bad = lines[1].split()[0]              # index 1: read by rank 1 of 2 (rank r takes r, r + 2, ...)
    with open(os.path.join(data, bad), "wb") as f:
        f.write(b"not an image at all")
    ckpt_dir = str(tmp_path / "ck")
    cmd = ["sh", "run_eval_multi.sh", "-cfg", DEMO_CFG, "-data_path", data, "-output", str(tmp_path / "ev"),
           "-opts", *TINY_RESMLP]
    # any weights of the right shape: a fresh model saved by hand
    from resmlp.method import ResMLPMethod
    from common.cli import build_parser, config_from_args
    import paddle
    config = config_from_args(build_parser().parse_args(["-cfg", DEMO_CFG, "-opts", *TINY_RESMLP]),
                              ResMLPMethod().get_config())
    os.makedirs(ckpt_dir)
    ckpt = os.path.join(ckpt_dir, "w.pdparams")
    paddle.save(ResMLPMethod().build_model(config).state_dict(), ckpt)
    start = time.time()
    proc = subprocess.run(cmd + ["-pretrained", ckpt], cwd=REPO, env=env(NPROC=2), capture_output=True, text=True,
                          timeout=240)
    elapsed = time.time() - start
    assert proc.returncode != 0
    assert elapsed < 120, elapsed
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:") and "(rank 1" in line]
    assert lines and bad.split("/")[-1] in lines[0], proc.stderr[-3000:]


def test_the_console_of_a_multi_process_run_is_quiet(small_demo, tmp_path):
    """Paddle's launcher prints dozens of LAUNCH INFO lines and its ranks glog start-up lines: they go to
    launch_logs/launcher.log; the console keeps the run's own log."""
    out = str(tmp_path / "run")
    proc = subprocess.run(["sh", "run_train_multi.sh", "-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out,
                           "-batch_size", "8", "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "1"], cwd=REPO,
                          env=env(NPROC=2), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for noise in ("LAUNCH INFO", "Modified FLAGS", "tcp_utils.cc", "No ccache found"):
        assert noise not in console, noise
    assert "final (epoch 1)" in proc.stdout
    with open(os.path.join(out, "launch_logs", "launcher.log")) as f:
        assert "LAUNCH INFO" in f.read()


def test_sigterm_stops_a_rank_that_cannot_handle_it_in_time(tmp_path):
    """A rank inside one long operation handles SIGTERM only when the operation returns (Python runs signal
    handlers between operations); the launcher kills it after its grace time instead of waiting for it."""
    stuck = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
             "time.sleep(600)")
    code = (f"import sys; from common.launch import run_child; "
            f"sys.exit(run_child([sys.executable, '-c', {stuck!r}], dict(__import__('os').environ)))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        members = descendants(proc.pid)
        assert len(members) == 1
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.time() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and 10 < took < 40, (proc.returncode, took)
    assert not any(alive(p, s) for p, s in members)


def test_a_signal_inside_a_pylayer_backward_is_reported_as_the_signal(monkeypatch, capsys):
    """Python code that Paddle's C++ autograd engine runs (the suite's PyLayer backwards) re-raises our Interrupted as
    Paddle's own multi-line error; the boundary still reports the signal: one line, exit 128 + N."""
    import paddle

    from common import errors
    monkeypatch.setattr(errors, "_received", [])

    class StoppedInBackward(paddle.autograd.PyLayer):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, dy):
            errors._raise_interrupted(signal.SIGTERM, None)   # what the SIGTERM handler does

    x = paddle.ones([2])
    x.stop_gradient = False
    with pytest.raises(BaseException) as info:
        StoppedInBackward.apply(x).sum().backward()
    assert not isinstance(info.value, errors.Interrupted)   # Paddle wrapped it: why the boundary must know
    assert errors.report(info.value) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: stopped by SIGTERM"
    monkeypatch.setattr(errors, "_received", [])           # without a signal, the same error is not one
    assert errors.report(info.value) != 128 + signal.SIGTERM
