"""Never lose a run, never a silent wrong number: the output folder guard, durable checkpoints, config validation
and non-finite detection, through the real command line."""
import os
import resource
import signal
import subprocess

import numpy as np
import pytest

from tests.helpers import REPO, TINY_RESMLP, env, read_json, resmlp_main, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")


def train(data, out, *opts, epochs=2, check=False, preexec_fn=None):
    args = resmlp_main("-cfg", DEMO_CFG, "-data_path", data, "-output", out, "-batch_size", "16",
                       "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", str(epochs), "TRAIN.WARMUP_EPOCHS", "1", *opts)
    if preexec_fn is None:
        return run_cli(args, check=check)
    return subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec_fn)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def assert_one_error(proc, code, *fragments):
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr[-3000:])


def epoch_of(path):
    from common.checkpoint import read_checkpoint
    return read_checkpoint(path)["epoch"]


@pytest.fixture(scope="module")
def finished(small_demo, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("finished") / "run")
    train(small_demo, out, epochs=2, check=True)
    return out


def test_a_rerun_without_resume_is_refused_and_changes_nothing(small_demo, finished):
    def files():   # the lock file records the pid of whoever holds it; everything else must stay untouched
        return {f: os.path.getmtime(os.path.join(finished, f)) for f in os.listdir(finished) if f != ".run.lock"}
    before = files()
    proc = train(small_demo, finished, epochs=2)
    assert_one_error(proc, 5, "already holds a run", "-resume auto", "SAVE.START_OVER True")
    after = files()
    assert before == after


def test_resuming_a_finished_run_says_so(small_demo, finished):
    proc = train(small_demo, finished, "MODEL.RESUME", "auto", epochs=2, check=True)
    assert "nothing to train" in proc.stdout and "already finished 2 of TRAIN.EPOCHS 2" in proc.stdout
    assert epoch_of(os.path.join(finished, "last.pdparams")) == 2


def test_starting_over_moves_the_earlier_run_aside(small_demo, tmp_path):
    out = str(tmp_path / "run")
    train(small_demo, out, "SAVE.KEEP", "1", epochs=2, check=True)
    old_epoch = os.path.join(out, "epoch_2.pdparams")
    assert os.path.exists(old_epoch)
    proc = train(small_demo, out, "SAVE.START_OVER", "True", "SAVE.KEEP", "1", epochs=1, check=True)
    assert "moved to" in proc.stdout
    moved = os.path.join(out, "previous_run_1")
    assert epoch_of(os.path.join(moved, "last.pdparams")) == 2 and os.path.exists(os.path.join(moved, "log.txt"))
    assert os.path.exists(os.path.join(moved, "epoch_2.pdparams"))
    assert epoch_of(os.path.join(out, "last.pdparams")) == 1
    assert read_json(os.path.join(out, "metrics.json"))["history"][-1]["epoch"] == 1


def test_pruning_keeps_files_that_are_not_this_runs(small_demo, tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    foreign = os.path.join(out, "epoch_1000.pdparams")   # e.g. copied in by hand: not ours to delete
    with open(foreign, "wb") as f:
        f.write(b"keep me")
    train(small_demo, out, "SAVE.KEEP", "1", epochs=3, check=True)
    assert os.path.exists(foreign)
    assert sorted(f for f in os.listdir(out) if f.startswith("epoch_")) == ["epoch_1000.pdparams", "epoch_3.pdparams"]


def test_one_run_per_output_folder(small_demo, tmp_path):
    out = str(tmp_path / "run")
    slow = resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out, "-batch_size", "16",
                           "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "500", "TRAIN.WARMUP_EPOCHS", "1")
    first = subprocess.Popen(slow, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = os.path.join(out, "log.txt")
        for _ in range(600):
            if os.path.exists(log) and "iter" in open(log).read():
                break
            assert first.poll() is None
            import time
            time.sleep(0.1)
        second = run_cli(slow + ["-resume", "auto"], check=False)
        assert_one_error(second, 5, "in use by another run", str(first.pid))
    finally:
        first.kill()
        first.wait()
    # a crashed (killed) run does not leave the folder locked
    proc = train(small_demo, out, "MODEL.RESUME", "auto", epochs=1, check=True)
    assert proc.returncode == 0


def test_temporary_files_of_a_killed_save_are_removed(small_demo, tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    stale = os.path.join(out, ".last.pdparams.tmp12345")
    with open(stale, "wb") as f:
        f.write(b"half a checkpoint")
    proc = train(small_demo, out, epochs=1, check=True)
    assert not os.path.exists(stale) and "temporary file" in proc.stdout


def _no_big_files(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_an_unwritable_output_is_found_before_the_first_epoch(small_demo, tmp_path):
    proc = train(small_demo, str(tmp_path / "run"), epochs=1, preexec_fn=_no_big_files(0))
    assert_one_error(proc, 4, "cannot write to the output folder")
    assert "epoch 1" not in proc.stdout


def test_a_failed_save_keeps_the_previous_checkpoint(small_demo, tmp_path):
    out = str(tmp_path / "run")
    train(small_demo, out, epochs=1, check=True)
    size = os.path.getsize(os.path.join(out, "last.pdparams"))
    # the logs fit under the limit, a checkpoint does not: the save at the end of epoch 2 fails
    proc = train(small_demo, out, "MODEL.RESUME", "auto", epochs=2, preexec_fn=_no_big_files(size // 2))
    assert_one_error(proc, 4, "last.pdparams")
    assert epoch_of(os.path.join(out, "last.pdparams")) == 1
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    with open(os.path.join(out, "log.txt")) as f:
        assert "error:" in f.read()          # the error line is in the run's log too


@pytest.mark.parametrize("opts, fragment", [
    (["EVAL.FREQ", "0"], "EVAL.FREQ 0"),
    (["TRAIN.EPOCHS", "0"], "TRAIN.EPOCHS 0"),
    (["TRAIN.BASE_LR", "1e999"], "TRAIN.BASE_LR inf"),
    (["TRAIN.BASE_LR", "nan"], "TRAIN.BASE_LR"),
    (["DATA.STD", "[0.2, 0.0, 0.2]"], "DATA.STD"),
    (["DATA.MEAN", "[0.5, 0.5]"], "DATA.MEAN has 2 values"),
    (["DATA.NUM_WORKERS", "-1"], "DATA.NUM_WORKERS -1"),
    (["DATA.IMAGE_SIZE", "0"], "DATA.IMAGE_SIZE 0"),
    (["DATA.INTERPOLATION", "bicubik"], "DATA.INTERPOLATION"),
    (["AUG.RAND_AUGMENT", "rand-m9-foo"], "AUG.RAND_AUGMENT"),
    (["TRAIN.OPTIMIZER.NAME", "adam"], "TRAIN.OPTIMIZER.NAME"),
    (["EVAL.TOPK", "[9]"], "EVAL.TOPK value 9"),
    (["TRAIN.EPOCHZ", "3"], "did you mean TRAIN.EPOCHS?"),
    (["MODEL.NAME", "resmlp_13_224"], "resmlp_13_224"),
])
def test_bad_config_values_stop_before_any_work(small_demo, tmp_path, opts, fragment):
    out = str(tmp_path / "run")
    proc = train(small_demo, out, *opts, epochs=1)
    assert_one_error(proc, 2, fragment)
    assert not os.path.exists(os.path.join(out, "last.pdparams"))


def test_more_training_samples_than_one_batch_are_needed(small_demo, tmp_path):
    proc = train(small_demo, str(tmp_path / "run"), "DATA.BATCH_SIZE", "4096", epochs=1)
    assert_one_error(proc, 2, "fewer than one batch")


def test_warm_up_longer_than_training_is_warned(small_demo, tmp_path):
    proc = train(small_demo, str(tmp_path / "run"), "TRAIN.WARMUP_EPOCHS", "5", epochs=1, check=True)
    assert "warning: TRAIN.WARMUP_EPOCHS 5 >= TRAIN.EPOCHS 1" in proc.stdout


def _nan_checkpoint(finished, tmp_path):
    from common.checkpoint import read_checkpoint
    import paddle
    state = read_checkpoint(os.path.join(finished, "last.pdparams"))["model"]
    state = {k: np.full_like(v, np.nan) if k.startswith("head") else v for k, v in state.items()}
    path = str(tmp_path / "nan.pdparams")
    paddle.save(state, path)
    return path


def test_a_nan_model_is_not_scored(small_demo, finished, tmp_path):
    path = _nan_checkpoint(finished, tmp_path)
    proc = run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", str(tmp_path / "eval"), "-eval",
                               "-pretrained", path, "-opts", *TINY_RESMLP), check=False)
    assert_one_error(proc, 3, "nan.pdparams", "hold NaN / inf values", "head.weight")
    assert "top1" not in proc.stdout
    assert not os.path.exists(tmp_path / "eval" / "eval_metrics.json")


def test_training_a_nan_model_stops_and_saves_nothing(small_demo, finished, tmp_path):
    path = _nan_checkpoint(finished, tmp_path)
    out = str(tmp_path / "run")
    proc = train(small_demo, out, "MODEL.PRETRAINED", path, "TRAIN.MAX_NONFINITE", "3", epochs=2)
    assert_one_error(proc, 3, "nan.pdparams", "hold NaN / inf values", "head.weight")
    assert not os.path.exists(os.path.join(out, "best.pdparams"))
    assert not os.path.exists(os.path.join(out, "last.pdparams"))


def test_traceback_only_on_request(small_demo, tmp_path):
    args = resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", str(tmp_path / "r"), "-opts",
                       *TINY_RESMLP, "EVAL.FREQ", "0")
    proc = run_cli(args, check=False, SUITE_TRACEBACK="1")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "error: invalid config" in proc.stderr
