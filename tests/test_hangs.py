"""Nothing hangs or lingers: a bad sample ends every command line within seconds with the suite's one `error:` line
(naming the image and its list line) and exit code 2, with 0 or N data workers; a signal stops a trainer with its
data workers (128 + signal, no C++ dump, no temporary checkpoint); a SIGKILLed trainer leaves no worker behind.

Unit tests check common/data/loader.py directly (same batches as Paddle's DataLoader, the error carried out of a
worker); the `*_cli` tests run the real commands, each in a session of its own so that even a hang is cleaned up."""
import faulthandler
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from common.data.datasets import DataError, ImageDataset, read_list_file
from common.data.loader import SampleError, SuiteLoader
from common.data.samplers import EvalBatchSampler, TrainBatchSampler
from common.proctree import descendants
from tests.helpers import REPO, TINY_RESMLP, env, resmlp_main

RESMLP_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")
PIM_CFG = os.path.join(REPO, "configs", "pim", "demo.yaml")
DYNAMIC_MLP_CFG = os.path.join(REPO, "configs", "dynamic_mlp", "demo.yaml")
PIM_TINY = ["MODEL.PIM.EFFICIENTNET.WIDTH_MULT", "0.25", "MODEL.PIM.EFFICIENTNET.DEPTH_MULT", "0.3",
            "MODEL.PIM.FPN_SIZE", "16", "MODEL.DROPPATH", "0.0"]
BOUND_S = 60          # a failing command must end well within this (it used to block forever)
TRAIN_LINE, VAL_LINE = 5, 7   # the list lines whose images are corrupted


# ------------------------------------------------------------------------------------------------------ helpers
def run_bounded(args, timeout=BOUND_S):
    """(return code, stdout, stderr, seconds); the command runs in a session of its own, killed as a whole (with any
    data worker it started) if it runs past `timeout`, which fails the test."""
    start = time.time()
    proc = subprocess.Popen(args, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s (hung): {' '.join(args)}\nstderr:\n{err[-3000:]}")
    return proc.returncode, out, err, time.time() - start


def running(pid, start):
    """A live process that is not a zombie (a zombie is dead; its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[19]) == start and fields[0] != "Z"


def group_members(pgid):
    """[(pid, start time)] of the live (not zombie) processes of a process group, wherever they were reparented."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append((int(name), int(fields[19])))
    return found


def wait_gone(members, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline and any(running(p, s) for p, s in members):
        time.sleep(0.05)
    return [p for p, s in members if running(p, s)]


def corrupt(path):
    with open(path, "wb") as f:
        f.write(b"this is not an image\x00\xff" * 20)


def list_entry(root, list_name, lineno):
    with open(os.path.join(root, list_name)) as f:
        line = f.read().splitlines()[lineno - 1]
    return os.path.join(root, line.split()[0])


def assert_data_error(rc, err, image, list_file, lineno):
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, f"exit {rc}\n{err[-3000:]}"
    assert len(errors) == 1, err[-3000:]
    assert image in errors[0] and f"{list_file}:{lineno}" in errors[0], errors[0]
    assert "Traceback" not in err and "Blocking queue" not in err, err[-3000:]


@pytest.fixture(scope="module")
def bad_data(small_demo, tmp_path_factory):
    """The small demo with one corrupt image in the train list and one in the val list."""
    root = str(tmp_path_factory.mktemp("bad") / "data")
    shutil.copytree(small_demo, root)
    train_image = list_entry(root, "train_list.txt", TRAIN_LINE)
    val_image = list_entry(root, "val_list.txt", VAL_LINE)
    corrupt(train_image)
    corrupt(val_image)
    return root, train_image, val_image


@pytest.fixture(scope="module")
def resmlp_weights(tmp_path_factory):
    from common.cli import build_parser, config_from_args
    from resmlp.method import ResMLPMethod
    method = ResMLPMethod()
    config = config_from_args(build_parser().parse_args(["-cfg", RESMLP_CFG, "-opts", *TINY_RESMLP]),
                              method.get_config())
    paddle.seed(0)
    path = str(tmp_path_factory.mktemp("resmlp_w") / "w.pdparams")
    paddle.save(method.build_model(config).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pim_weights(tmp_path_factory):
    from common.cli import build_parser, config_from_args
    from pim.method import PIMMethod
    method = PIMMethod()
    config = config_from_args(build_parser().parse_args(["-cfg", PIM_CFG, "-opts", *PIM_TINY]), method.get_config())
    paddle.seed(0)
    path = str(tmp_path_factory.mktemp("pim_w") / "w.pdparams")
    paddle.save(method.build_model(config).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def dynamic_mlp_weights(tmp_path_factory):
    from common.cli import build_parser, config_from_args
    from dynamic_mlp.method import DynamicMLPMethod
    method = DynamicMLPMethod()
    config = config_from_args(build_parser().parse_args(["-cfg", DYNAMIC_MLP_CFG]), method.get_config())
    paddle.seed(0)
    path = str(tmp_path_factory.mktemp("dynamic_mlp_w") / "w.pdparams")
    paddle.save(method.build_model(config).state_dict(), path)
    return path


def train_cmd(data, out, workers, *opts):
    return resmlp_main("-cfg", RESMLP_CFG, "-data_path", data, "-output", out,
                       "-opts", *TINY_RESMLP, "DATA.NUM_WORKERS", str(workers), *opts)


# ------------------------------------------------------------------------------------------------------ unit
@pytest.fixture
def bounded():
    """In-process loader tests: a hang dumps every thread's traceback and ends the test run instead of blocking."""
    faulthandler.dump_traceback_later(BOUND_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


class Flaky:
    """A map-style data set whose sample `bad` raises `error`; the others are small arrays."""

    def __init__(self, n, bad, error, samples=None):
        self.n, self.bad, self.error, self.samples = n, bad, error, samples

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise self.error
        return np.full((3, 4, 4), i, dtype="float32"), np.int64(i % 3), np.array([i, -i], dtype="float32")


def test_batches_match_paddles_dataloader(small_demo, bounded):
    """The same structure, dtypes and values as paddle.io.DataLoader, with 0 and 2 workers (training transforms,
    which reseed per sample, and a metadata field)."""
    from common.cli import build_parser, config_from_args
    from dynamic_mlp.metadata import MetadataEncoder
    from resmlp.method import ResMLPMethod
    method = ResMLPMethod()
    config = config_from_args(build_parser().parse_args(["-cfg", RESMLP_CFG, "-opts", *TINY_RESMLP]),
                              method.get_config())
    samples = read_list_file(os.path.join(small_demo, "train_list.txt"), small_demo, 8)[:48]
    ds = ImageDataset(samples, method.train_transform(config), train=True, seed=3, meta_fn=MetadataEncoder())
    ds.set_epoch(2)

    def batches(loader):
        return [[(t.numpy(), t.dtype, t.stop_gradient) for t in b] for b in loader]

    for workers in (0, 2):
        sampler = TrainBatchSampler(len(ds), 16, seed=3)
        sampler.set_epoch(2)
        ref = batches(paddle.io.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                           use_shared_memory=workers > 0))
        got = batches(SuiteLoader(ds, sampler, workers))
        assert len(got) == len(ref) == 3
        for a, b in zip(ref, got):
            assert len(a) == len(b) == 3
            for (x, dx, sx), (y, dy, sy) in zip(a, b):
                assert dx == dy and sx == sy and x.shape == y.shape
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("workers", [0, 2])
def test_sample_error_is_raised_as_it_is(workers, bounded):
    before = {p for p, _ in descendants(os.getpid())}
    ds = Flaky(40, 13, DataError("cannot decode image /x/13.jpg (listed at /x/list.txt:14): broken"))
    start = time.time()
    seen = 0
    with pytest.raises(DataError, match=r"^cannot decode image /x/13.jpg \(listed at /x/list.txt:14\): broken$"):
        for batch in SuiteLoader(ds, EvalBatchSampler(len(ds), 4), workers):
            assert [tuple(t.shape) for t in batch] == [(4, 3, 4, 4), (4,), (4, 2)]
            seen += 1
    assert seen == 3 and time.time() - start < 20   # the batches before the bad one, in order
    assert wait_gone([m for m in descendants(os.getpid()) if m[0] not in before], 5) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_other_exception_names_the_sample(workers, bounded):
    from common.data.datasets import Sample
    samples = [Sample(f"/x/{i}.jpg", 0, (), f"/x/list.txt:{i + 1}") for i in range(8)]
    ds = Flaky(8, 5, ZeroDivisionError("division by zero"), samples)
    with pytest.raises(SampleError) as info:
        list(SuiteLoader(ds, EvalBatchSampler(len(ds), 2), workers))
    assert str(info.value) == ("reading image /x/5.jpg (listed at /x/list.txt:6) failed: ZeroDivisionError: "
                               "division by zero")
    cause = info.value.__cause__     # the original exception, or a worker's traceback of it
    assert "ZeroDivisionError" in f"{type(cause).__name__}: {cause}"


def test_loader_stopped_early_leaves_no_worker(bounded):
    before = {p for p, _ in descendants(os.getpid())}
    ds = Flaky(64, -1, None)
    it = iter(SuiteLoader(ds, EvalBatchSampler(len(ds), 4), 2))
    next(it)
    workers = [m for m in descendants(os.getpid()) if m[0] not in before]
    assert len(workers) == 2
    it.close()
    assert wait_gone(workers, 5) == []


# ------------------------------------------------------------------------------------------------------ CLI: bad data
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_ends_training_cli(bad_data, tmp_path, workers):
    root, train_image, _ = bad_data
    rc, _, err, seconds = run_bounded(train_cmd(root, str(tmp_path / "out"), workers, "TRAIN.EPOCHS", "1"))
    assert_data_error(rc, err, train_image, os.path.join(root, "train_list.txt"), TRAIN_LINE)
    print(f"training, {workers} workers: ended in {seconds:.1f} s")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_ends_evaluation_cli(bad_data, resmlp_weights, tmp_path, workers):
    root, _, val_image = bad_data
    rc, _, err, seconds = run_bounded(resmlp_main("-cfg", RESMLP_CFG, "-data_path", root, "-output",
                                                  str(tmp_path / "out"), "-eval", "-pretrained", resmlp_weights,
                                                  "-opts", *TINY_RESMLP, "DATA.NUM_WORKERS", str(workers)))
    assert_data_error(rc, err, val_image, os.path.join(root, "val_list.txt"), VAL_LINE)
    print(f"-eval, {workers} workers: ended in {seconds:.1f} s")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_ends_predict_cli(bad_data, resmlp_weights, workers):
    root, _, val_image = bad_data
    rc, out, err, seconds = run_bounded([sys.executable, os.path.join(REPO, "resmlp", "predict.py"), "-cfg",
                                         RESMLP_CFG, "-pretrained", resmlp_weights, "-image",
                                         os.path.join(root, "val_list.txt"), "-data_path", root, "-batch_size", "8",
                                         "-opts", *TINY_RESMLP, "DATA.NUM_WORKERS", str(workers)])
    assert_data_error(rc, err, val_image, os.path.join(root, "val_list.txt"), VAL_LINE)
    print(f"predict.py, {workers} workers: ended in {seconds:.1f} s")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_ends_pim_infer_cli(bad_data, pim_weights, tmp_path, workers):
    root, _, val_image = bad_data
    rc, _, err, seconds = run_bounded([sys.executable, os.path.join(REPO, "pim", "infer.py"), "-cfg", PIM_CFG,
                                       "-pretrained", pim_weights, "-image", os.path.join(root, "val_list.txt"),
                                       "-data_path", root, "-output", str(tmp_path / "infer"), "-batch_size", "8",
                                       "-opts", *PIM_TINY, "DATA.NUM_WORKERS", str(workers)])
    assert_data_error(rc, err, val_image, os.path.join(root, "val_list.txt"), VAL_LINE)
    print(f"pim/infer.py, {workers} workers: ended in {seconds:.1f} s")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_metadata_ends_predict_cli(small_demo, dynamic_mlp_weights, tmp_path, workers):
    """A latitude out of range in a list line: read (and rejected) inside the loader, in a worker with 2."""
    with open(os.path.join(small_demo, "val_list.txt")) as f:
        rows = f.read().splitlines()
    parts = rows[VAL_LINE - 1].split()
    parts[2] = "95.5"
    rows[VAL_LINE - 1] = " ".join(parts)
    listed = str(tmp_path / "bad_meta.txt")
    with open(listed, "w") as f:
        f.write("\n".join(rows) + "\n")
    rc, _, err, seconds = run_bounded([sys.executable, os.path.join(REPO, "dynamic_mlp", "predict.py"), "-cfg",
                                       DYNAMIC_MLP_CFG, "-pretrained", dynamic_mlp_weights, "-image", listed,
                                       "-data_path", small_demo, "-opts", "DATA.NUM_WORKERS", str(workers)])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1, f"exit {rc}\n{err[-3000:]}"
    assert f"{listed}:{VAL_LINE}: latitude 95.5 is outside" in errors[0], errors[0]
    assert "Traceback" not in err and "Blocking queue" not in err, err[-3000:]
    print(f"dynamic_mlp/predict.py, bad metadata, {workers} workers: ended in {seconds:.1f} s")


def test_corrupt_image_ends_pim_heatmap_cli(bad_data, pim_weights, tmp_path):
    root, _, val_image = bad_data
    rc, _, err, _ = run_bounded([sys.executable, os.path.join(REPO, "pim", "heatmap.py"), "-cfg", PIM_CFG,
                                 "-pretrained", pim_weights, "-image", val_image, "-data_path", root,
                                 "-output", str(tmp_path / "heat.png"), "-opts", *PIM_TINY])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and val_image in errors[0], err[-3000:]
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------------ CLI: signals
def start_long_training(data, out):
    """A trainer with 2 data workers that would run for minutes, in a session of its own; returns it once its log
    shows a training iteration. Its stderr goes to a file (`proc.stderr_path`): a pipe would stay open as long as
    any worker that inherited it lives."""
    stderr_path = os.path.join(os.path.dirname(out), "stderr.txt")
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(train_cmd(data, out, 2, "TRAIN.EPOCHS", "200", "DATA.BATCH_SIZE", "8",
                                          "REPORT_FREQ", "1", "SAVE.FREQ", "1"),
                                cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    proc.stderr_path = stderr_path
    log = os.path.join(out, "log.txt")
    deadline = time.time() + BOUND_S
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and " iter " in open(log).read():
            return proc
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pytest.fail(f"the training never logged an iteration:\n{read(stderr_path)[-3000:]}")


def read(path):
    with open(path) as f:
        return f.read()


def watch_descendants(proc, seconds=1.0):
    """Every process below `proc` seen over `seconds` (workers are started again every epoch)."""
    seen = set()
    deadline = time.time() + seconds
    while time.time() < deadline:
        seen.update(descendants(proc.pid))
        time.sleep(0.02)
    return seen


@pytest.mark.parametrize("sig,group", [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
                         ids=["sigterm", "sigterm-group", "sigint-group"])
def test_signal_stops_trainer_and_its_workers_cli(small_demo, tmp_path, sig, group):
    """To the trainer alone (kill PID), or to its whole process group (Ctrl-C in a terminal, a service manager,
    the launcher's stop_tree): a short message, 128 + signal, no C++ dump, no temporary checkpoint, no worker
    left."""
    out = str(tmp_path / "out")
    proc = start_long_training(small_demo, out)
    members = watch_descendants(proc)
    assert members, "the trainer has no data workers"
    members |= set(descendants(proc.pid))
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    start = time.time()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running 20 s after {sig.name}:\n{read(proc.stderr_path)[-3000:]}")
    seconds = time.time() - start
    err = read(proc.stderr_path)
    assert proc.returncode == 128 + sig, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: stopped by {sig.name}"], err[-3000:]
    assert "FatalError" not in err and "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert [f for f in os.listdir(out) if ".tmp" in f] == []
    left = wait_gone(members, 5) + wait_gone(group_members(proc.pid), 1)
    assert left == [], f"data workers still alive after {sig.name}: {left}"
    print(f"{sig.name}{' to the group' if group else ''}: ended in {seconds:.2f} s, {len(members)} workers seen")


def test_sigkill_leaves_no_worker_cli(small_demo, tmp_path):
    proc = start_long_training(small_demo, str(tmp_path / "out"))
    members = watch_descendants(proc)
    assert members, "the trainer has no data workers"
    members |= set(descendants(proc.pid))
    proc.kill()
    proc.wait()
    start = time.time()
    left = wait_gone(members, 5)
    seconds = time.time() - start
    left += wait_gone(group_members(proc.pid), 1)
    try:
        assert left == [], f"data workers outlived the SIGKILLed trainer: {left}"
    finally:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    print(f"SIGKILL: workers gone {seconds:.2f} s after the trainer")
