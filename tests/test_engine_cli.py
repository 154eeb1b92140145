"""The engine through the real command line: resume after a kill, exact distributed evaluation, AMP/EMA flags,
non-finite losses, strict pretrained loading."""
import os
import signal
import subprocess
import time

import pytest

from tests.helpers import REPO, TINY_RESMLP, env, read_json, resmlp_main, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")


def train_args(data, out, *opts, epochs=3):
    return resmlp_main("-cfg", DEMO_CFG, "-data_path", data, "-output", out, "-batch_size", "16",
                       "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", str(epochs), "TRAIN.WARMUP_EPOCHS", "1", *opts)


@pytest.fixture(scope="module")
def trained(small_demo, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("trained"))
    run_cli(train_args(small_demo, out, epochs=2))
    return out


def final(out):
    return read_json(os.path.join(out, "metrics.json"))["history"][-1]


def test_killed_run_resumes_to_the_same_result(small_demo, tmp_path):
    # augmentation that consumes randomness everywhere: RandAugment, erasing, mixup/cutmix, drop path
    opts = ["AUG.RAND_AUGMENT", "rand-m9-mstd0.5-inc1", "AUG.RE_PROB", "0.25", "AUG.MIXUP_PROB", "1.0",
            "MODEL.DROPPATH", "0.1"]
    ref = str(tmp_path / "ref")
    run_cli(train_args(small_demo, ref, *opts))

    out = str(tmp_path / "killed")
    proc = subprocess.Popen(train_args(small_demo, out, *opts), cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = os.path.join(out, "metrics.json")  # written right after the epoch's checkpoint
    deadline = time.time() + 300
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from common.checkpoint import read_checkpoint
    assert read_checkpoint(os.path.join(out, "last.pdparams"))["epoch"] < 3, "the run finished before the kill"

    proc = run_cli(train_args(small_demo, out, *opts, "MODEL.RESUME", "auto"))
    assert "resumed from" in proc.stdout
    a, b = final(ref), final(out)
    assert a["epoch"] == b["epoch"] == 3
    assert a["val_correct"] == b["val_correct"]
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)


def test_checkpoint_holds_everything(trained):
    from common.checkpoint import read_checkpoint
    ck = read_checkpoint(os.path.join(trained, "last.pdparams"))
    for key in ("model", "ema", "optimizer", "lr_scheduler", "scaler", "epoch", "best", "rng", "config"):
        assert key in ck
    assert ck["epoch"] == 2 and ck["lr_scheduler"]["last_epoch"] > 0
    # optimizer state is keyed by structured parameter names, independent of Paddle's creation counters
    assert any(k.startswith("head.weight_") for k in ck["optimizer"])
    assert "NUM_CLASSES: 8" in ck["config"]
    assert os.path.exists(os.path.join(trained, "best.pdparams"))
    assert os.path.exists(os.path.join(trained, "config.yaml"))
    assert not [f for f in os.listdir(trained) if ".tmp" in f]


def test_one_and_two_ranks_count_the_same(trained, small_demo, tmp_path):
    ckpt = os.path.join(trained, "last.pdparams")
    results = {}
    for nproc in (1, 2):
        out = str(tmp_path / f"eval{nproc}")
        run_cli(["sh", "run_eval_multi.sh", "-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out,
                 "-pretrained", ckpt, "-batch_size_eval", "5", "-opts", *TINY_RESMLP], NPROC=nproc)
        results[nproc] = read_json(os.path.join(out, "eval_metrics.json"))
    assert results[1]["count"] == results[2]["count"] == 64
    assert results[1]["correct"] == results[2]["correct"]
    assert results[1]["top1"] == pytest.approx(results[2]["top1"])
    assert results[1]["loss"] == pytest.approx(results[2]["loss"], rel=1e-5)
    # and the evaluation of the last checkpoint equals what training reported for its last epoch
    assert results[1]["correct"] == final(trained)["val_correct"]


def test_two_process_training_runs(small_demo, tmp_path):
    out = str(tmp_path / "ddp")
    # OMP_NUM_THREADS left to the launcher (empty = unset), which gives each process its share of the cores
    proc = run_cli(["sh", "run_train_multi.sh", "-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out,
                    "-batch_size", "8", "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "1"], NPROC=2, OMP_NUM_THREADS="")
    assert "paddle.distributed.launch" in proc.stdout
    h = read_json(os.path.join(out, "metrics.json"))["history"]
    assert h[-1]["val_count"] == 64
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    with open(os.path.join(out, "log.txt")) as f:   # every process sets (and logs) its math threads
        assert f"on cpu (math threads per process: {share}), 2 process(es)" in f.read()


@pytest.mark.parametrize("amp", [["AMP.DTYPE", "float16", "AMP.LEVEL", "O1"], ["AMP.DTYPE", "bfloat16", "AMP.LEVEL", "O2"]])
def test_amp_flag_runs_on_cpu(small_demo, tmp_path, amp):
    out = str(tmp_path / "amp")
    run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out, "-amp",
                        "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "1", *amp))
    assert final(out)["val_count"] == 64


def test_ema_is_evaluated_and_saved(small_demo, tmp_path):
    out = str(tmp_path / "ema")
    run_cli(train_args(small_demo, out, "EMA.ENABLE", "True", "EMA.DECAY", "0.9", epochs=1))
    last = final(out)
    assert "val_ema_top1" in last and last["val_ema_count"] == 64


def test_non_finite_loss_stops_every_rank_with_a_message(small_demo, tmp_path):
    out = str(tmp_path / "nan")
    args = ["sh", "run_train_multi.sh", "-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out,
            "-batch_size", "8", "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "2", "TRAIN.OPTIMIZER.NAME", "SGD",
            "TRAIN.BASE_LR", "1e30", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.MAX_NONFINITE", "2"]
    proc = run_cli(args, check=False, timeout=300, NPROC=2)
    assert proc.returncode != 0
    logs = "".join(open(os.path.join(out, f"log_rank{r}.txt")).read() for r in (0, 1))
    assert logs.count("non-finite loss") >= 2
    text = proc.stdout + proc.stderr
    for r in (0, 1):
        worker = os.path.join(out, "launch_logs", f"workerlog.{r}")
        if os.path.exists(worker):
            text += open(worker).read()
    assert "stopping" in text and "non-finite 2 times in a row" in text


def test_pretrained_mismatch_names_keys_and_new_head_is_allowed(trained, small_demo, tmp_path):
    ckpt = os.path.join(trained, "last.pdparams")
    base = ["-cfg", DEMO_CFG, "-data_path", small_demo, "-eval", "-pretrained", ckpt]
    proc = run_cli(resmlp_main(*base, "-output", str(tmp_path / "a"), "-opts", *TINY_RESMLP,
                               "MODEL.MIXER.DEPTH", "3"), check=False)
    assert proc.returncode == 2
    assert "missing keys" in proc.stderr and "mixer_layers.2.linear_tokens.weight" in proc.stderr

    (tmp_path / "five").mkdir()
    five = str(tmp_path / "five")
    with open(os.path.join(small_demo, "val_list.txt")) as f:
        rows = [r for r in f.read().split("\n") if r and int(r.split()[1]) < 5]
    open(os.path.join(five, "val_list.txt"), "w").write("\n".join(
        os.path.join(small_demo, r.split()[0]) + " " + r.split()[1] for r in rows) + "\n")
    args = ["-cfg", DEMO_CFG, "-data_path", five, "-eval", "-pretrained", ckpt, "-output", str(tmp_path / "b"),
            "-opts", *TINY_RESMLP, "MODEL.NUM_CLASSES", "5", "DATA.CLASS_NAMES", "''"]
    proc = run_cli(resmlp_main(*args), check=False)
    assert proc.returncode == 2 and "head.weight checkpoint (32, 8) vs model (32, 5)" in proc.stderr
    proc = run_cli(resmlp_main(*args, "MODEL.PRETRAINED_NEW_HEAD", "True"))
    assert "kept the new classifier (head.weight, head.bias)" in proc.stdout


def test_unknown_key_and_bad_data_fail_with_a_clear_message(small_demo, tmp_path):
    proc = run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-opts", "TRAIN.EPOCHZ", "1"),
                   check=False)
    assert proc.returncode == 2 and "TRAIN.EPOCHZ" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", str(tmp_path)), check=False)
    assert proc.returncode == 2 and "train_list.txt" in proc.stderr


def test_gradient_accumulation_matches_the_large_batch(small_demo, tmp_path):
    """8 x 2 accumulated micro-batches take the same steps as batches of 16 (no BatchNorm, no dropout)."""
    common = ["-cfg", DEMO_CFG, "-data_path", small_demo, "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "2",
              "TRAIN.WARMUP_EPOCHS", "1"]
    big, acc = str(tmp_path / "big"), str(tmp_path / "acc")
    run_cli(resmlp_main("-output", big, "-batch_size", "16", *common))
    run_cli(resmlp_main("-output", acc, "-batch_size", "8", "-accum_iter", "2", *common))
    a, b = final(big), final(acc)
    assert a["val_correct"] == b["val_correct"]
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_eval_without_trained_weights_says_so(trained, small_demo, tmp_path):
    """-eval scores what it is given, but an untrained model or an untrained classifier is named as such."""
    base = ["-cfg", DEMO_CFG, "-data_path", small_demo, "-eval", "-opts", *TINY_RESMLP]
    bare = run_cli(resmlp_main(*base[:5], "-output", str(tmp_path / "bare"), *base[5:]))
    assert "warning: evaluating with no weights were given (-pretrained): the model's initial weights" in bare.stdout
    new_head = run_cli(resmlp_main(*base[:5], "-output", str(tmp_path / "head"), "-pretrained",
                                   os.path.join(trained, "last.pdparams"), *base[5:], "MODEL.NUM_CLASSES", "5",
                                   "MODEL.PRETRAINED_NEW_HEAD", "True"), check=False)
    ok = run_cli(resmlp_main(*base[:5], "-output", str(tmp_path / "ok"), "-pretrained",
                             os.path.join(trained, "last.pdparams"), *base[5:]))
    assert "warning: evaluating" not in ok.stdout
    assert "did not fill the classifier (head.weight, head.bias): it is as initialised" in new_head.stdout, \
        new_head.stdout[-2000:] + new_head.stderr[-2000:]
