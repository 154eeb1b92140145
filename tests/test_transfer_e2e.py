"""transfer/ through the real command line: the demo comparison (a model pre-trained on one task of the demo data,
fine-tuned on another, beats the same model trained from scratch on it with the same recipe and epochs), prediction
and export of the fine-tuned model, every knob of the Inception v4 recipe in one short run, and a clear error for an
out-of-range NEW_LAYERS."""
import argparse
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from common.deploy import ExportedClassifier
from common.inference import load_model
from tests.helpers import REPO, env, read_json, run_cli
from transfer.demo_split import make_demo_split
from transfer.method import TransferMethod

CFG = os.path.join(REPO, "configs", "transfer")
QUIET = ["VISUALDL", "False", "DATA.NUM_WORKERS", "0", "EVAL.FREQ", "100"]   # evaluate after the last epoch


@pytest.fixture(scope="module")
def tasks(demo_full, tmp_path_factory):
    """The demo data with the transfer task lists, in a folder of its own (the shared demo folder stays as is)."""
    root = tmp_path_factory.mktemp("transfer_demo")
    os.symlink(os.path.join(demo_full, "images"), root / "images")
    for name in ("train_list.txt", "val_list.txt", "classes.txt"):
        shutil.copy(os.path.join(demo_full, name), root / name)
    make_demo_split(str(root))
    return str(root)


def train(cfg, data, out, *extra, opts=()):
    return run_cli(["sh", "run_train_multi.sh", "-cfg", os.path.join(CFG, cfg), "-data_path", data, "-output", out,
                    *extra, "-opts", *QUIET, *opts], timeout=1200)


def final_top1(out):
    return read_json(os.path.join(out, "metrics.json"))["history"][-1]["val_top1"]


@pytest.fixture(scope="module")
def demo_runs(tasks, tmp_path_factory):
    """The three demo runs: pre-train on the source task, fine-tune on the target, train on the target from scratch."""
    base = tmp_path_factory.mktemp("transfer_runs")
    src, ft, scratch = (str(base / n) for n in ("source", "finetune", "scratch"))
    train("demo_source.yaml", tasks, src)
    log = train("demo.yaml", tasks, ft, "-pretrained", os.path.join(src, "last.pdparams")).stdout
    train("demo_scratch.yaml", tasks, scratch)
    return {"source": src, "finetune": ft, "scratch": scratch, "finetune_log": log}


def test_finetuning_beats_training_from_scratch(demo_runs):
    log = demo_runs["finetune_log"]
    assert "kept the new classifier" not in log          # same class count: the head is loaded, then re-initialised
    assert "re-initialised: fc, layer4.1" in log
    assert re.search(r"learning rates: head \S+ \(2 tensors\), high \S+ \(\d+ tensors\), low \S+ \(15 tensors\)", log)
    assert "L2-SP on 22 tensors (18 pulled to their starting values, 4 to zero)" in log
    assert re.search(r"iter \d+/\d+ loss [\d.]+ l2sp [\d.]+ lr", log)   # the term is logged on its own
    source, tuned, fresh = (final_top1(demo_runs[k]) for k in ("source", "finetune", "scratch"))
    print(f"\ntransfer demo (resnet18, 48 px, 4 classes, 100 val images each): source task {source:.0f}%, "
          f"fine-tuned {tuned:.0f}%, from scratch {fresh:.0f}%")
    assert source > 50                                   # the source model learned its own task (chance: 25%)
    assert tuned >= fresh + 15, (tuned, fresh)


def test_predict_and_export_of_the_finetuned_model(demo_runs, tasks, tmp_path):
    """predict.py agrees with the run's own evaluation; the exported model gives the dygraph logits."""
    ckpt = os.path.join(demo_runs["finetune"], "last.pdparams")
    cfg = os.path.join(CFG, "demo.yaml")
    proc = run_cli([sys.executable, os.path.join(REPO, "transfer", "predict.py"), "-cfg", cfg, "-pretrained", ckpt,
                    "-data_path", tasks, "-image", os.path.join(tasks, "transfer_target_val.txt")])
    correct = read_json(os.path.join(demo_runs["finetune"], "metrics.json"))["history"][-1]["val_correct"]
    found = re.search(r"top-1 on 100 labelled images: [\d.]+% \((\d+)\)", proc.stdout)
    assert found and int(found.group(1)) == correct

    out = str(tmp_path / "export")
    run_cli([sys.executable, os.path.join(REPO, "transfer", "export.py"), "-cfg", cfg, "-pretrained", ckpt,
             "-data_path", tasks, "-output", out])
    meta = read_json(os.path.join(out, "inference.json"))
    assert meta["class_names"][0] == "barred_fine" and meta["mean"] == [0.485, 0.456, 0.406]
    args = argparse.Namespace(cfg=cfg, pretrained=ckpt, opts=[], data_path=tasks)
    _, model = load_model(TransferMethod(), args)
    clf = ExportedClassifier(out)
    batch = clf.preprocess([Image.open(os.path.join(tasks, "images", c, "0070.jpg"))
                            for c in ("barred_fine", "checkered_fine")])
    with paddle.no_grad():
        ref = model(paddle.to_tensor(batch)).numpy()
    got = clf.run(batch)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_every_inception_knob_through_the_launcher(tasks, tmp_path):
    """The aircraft recipe (mixup 0.2, RandAugment, random erasing, label smoothing, step decay, warm-up, AMP flag)
    plus new layers, three learning rates and the reference's L2-SP, on a few tiny images (75 px, the smallest
    input Inception v4 takes)."""
    for split, n in (("train", 2), ("val", 1)):
        with open(os.path.join(tasks, f"transfer_target_{split}.txt")) as f:
            rows = [line for line in f if line.strip()]
        picked = [r for label in range(4) for r in [x for x in rows if x.split()[1] == str(label)][:n]]
        with open(os.path.join(tasks, f"tiny_{split}.txt"), "w") as f:
            f.writelines(picked)
    out = str(tmp_path / "inception")
    proc = train("inception_v4_aircraft.yaml", tasks, out, "-batch_size", "4", "-amp", opts=[
        "MODEL.PRETRAINED", "", "MODEL.NUM_CLASSES", "4", "DATA.IMAGE_SIZE", "75",
        "DATA.TRAIN_LIST", "tiny_train.txt", "DATA.VAL_LIST", "tiny_val.txt", "DATA.CLASS_NAMES", "",
        "TRAIN.EPOCHS", "2", "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.LR_SCHEDULER.DECAY_EPOCHS", "1", "REPORT_FREQ", "1",
        "TRANSFER.NEW_LAYERS", "3", "TRANSFER.NUM_LOWLRS", "8", "TRANSFER.LRS", "[0.03, 0.01, 0.003]",
        "TRANSFER.L2SP.ENABLE", "True", "TRANSFER.L2SP.MODE", "reference"])
    log = proc.stdout
    assert "re-initialised: last_linear, features.21, features.20" in log
    assert "learning rates: head 0.03 (2 tensors), high 0.01" in log and "low 0.003" in log
    assert "(mode reference)" in log and "l2sp" in log
    assert "normalisation: mean [0.4893" in log            # the aircraft statistics by name
    # the rate after each of the 4 steps (2 per epoch): warm-up from 1e-4 over epoch 1, then 0.03 * 0.9 ** epoch
    lrs = [float(x) for x in re.findall(r"epoch \d/2 iter \d+/\d+ .* lr ([\d.e+-]+)", log)]
    assert lrs == pytest.approx([1e-4 + (0.03 - 1e-4) / 2, 0.027, 0.027, 0.0243], rel=1e-3)
    saved = open(os.path.join(out, "config.yaml")).read()
    for key in ("RAND_AUGMENT: rand-m9-mstd0.5-inc1", "MIXUP_ALPHA: 0.2", "RE_PROB: 0.5", "RE_MODE: pixel"):
        assert key in saved, key
    history = read_json(os.path.join(out, "metrics.json"))["history"]
    assert len(history) == 2 and history[-1]["val_count"] == 4


def test_out_of_range_new_layers_is_a_clear_error_from_inside_the_folder(tasks, tmp_path):
    proc = subprocess.run([sys.executable, "main_multi_gpu.py", "-cfg", os.path.join(CFG, "demo.yaml"),
                           "-data_path", tasks, "-output", str(tmp_path / "bad"), "-opts", *QUIET,
                           "TRANSFER.NEW_LAYERS", "11"], cwd=os.path.join(REPO, "transfer"), env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: TRANSFER.NEW_LAYERS 11 is out of range for ResNet: 1 (classifier only) to 10" in proc.stderr
