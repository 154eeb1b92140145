"""PIM end to end through the real scripts: the demo config trains well above chance on every head, -eval on the
last checkpoint reproduces the combiner's count, and infer.py's predictions agree with it."""
import csv
import os
import sys

from tests.helpers import REPO, read_json, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "pim", "demo.yaml")
CHANCE = 100.0 / 8
HEADS = ["layer1", "layer2", "layer3", "layer4", "sum"]


def test_demo_trains_every_head_and_eval_reproduces_it(demo_full, tmp_path):
    out = str(tmp_path / "train")
    proc = run_cli(["sh", "run_train_multi.sh", "-cfg", DEMO_CFG, "-data_path", demo_full, "-output", out,
                    "-opts", "VISUALDL", "False"], timeout=1800)
    epochs = read_json(os.path.join(out, "metrics.json"))["history"]
    last = epochs[-1]
    assert f"final (epoch {last['epoch']})" in proc.stdout
    assert last["val_count"] == 200
    per_head = {"combiner": last["val_top1"], **{h: last[f"val_{h}/top1"] for h in HEADS}}
    print("\ndemo top-1 per head: " + ", ".join(f"{h} {v:.1f}" for h, v in per_head.items()) +
          f"; combiner top-3 {last['val_top3']:.1f}")
    assert last["val_top1"] > 3 * CHANCE, per_head           # the combiner, the main head
    assert min(per_head.values()) > 2 * CHANCE, per_head
    assert last["val_top3"] >= last["val_top1"]
    log = open(os.path.join(out, "log.txt")).read()
    assert "loss_b" in log and "loss_n" in log and "loss_c" in log and "loss_s" not in log  # lambda_s = 0

    ev = str(tmp_path / "eval")
    run_cli(["sh", "run_eval_multi.sh", "-cfg", DEMO_CFG, "-data_path", demo_full, "-output", ev,
             "-pretrained", os.path.join(out, "last.pdparams")])
    metrics = read_json(os.path.join(ev, "eval_metrics.json"))
    assert metrics["correct"] == last["val_correct"]
    for h in HEADS:
        assert metrics[f"{h}/correct"] == last[f"val_{h}/correct"], h

    inf = tmp_path / "infer"
    proc = run_cli([sys.executable, os.path.join(REPO, "pim", "infer.py"), "-cfg", DEMO_CFG, "-pretrained",
                    os.path.join(out, "last.pdparams"), "-image", os.path.join(demo_full, "val_list.txt"),
                    "-data_path", demo_full, "-output", str(inf)])
    with open(inf / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["label"] == r["prediction"] for r in rows) == metrics["correct"]


def test_two_ranks_agree_when_one_rank_has_no_validation_images(tmp_path):
    # One validation image on two ranks: rank 1 sees nothing yet must sum the same per-head vector as rank 0.
    from common.demo_data import make_demo_data
    data = make_demo_data(str(tmp_path / "data"), train_per_class=1, val_per_class=1, seed=3)
    with open(os.path.join(data, "val_list.txt")) as f:
        first = f.readline()
    with open(os.path.join(data, "val_list.txt"), "w") as f:
        f.write(first)
    out = str(tmp_path / "eval")
    run_cli(["sh", "run_eval_multi.sh", "-cfg", DEMO_CFG, "-data_path", data, "-output", out,
             "-opts", "VISUALDL", "False"], NPROC=2, timeout=600)
    metrics = read_json(os.path.join(out, "eval_metrics.json"))
    assert metrics["count"] == 1
    for h in HEADS:
        assert metrics[f"{h}/correct"] in (0, 1), h
