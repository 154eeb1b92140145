"""Evaluation a person can read, through the real command lines on tiny data: progress with throughput and ETA,
per-class accuracy and confusion matrices from -eval (1 and 2 processes) and predict.py -report, the end-of-run
summary / metrics.csv / training curves, and PIM heat-map panels for a folder of images."""
import csv
import os
import re
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, TINY_RESMLP, read_json, resmlp_main, run_cli
from tests.test_pim_tools import DEMO_CFG as PIM_CFG, TINY as PIM_TINY, tiny_checkpoint  # noqa: F401 (fixture)

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")
CLASSES = ["barred_fine", "barred_coarse", "striped_fine", "striped_coarse", "spotted_fine", "spotted_coarse",
           "checkered_fine", "checkered_coarse"]


def train_args(data, out, *opts):
    return resmlp_main("-cfg", DEMO_CFG, "-data_path", data, "-output", out, "-batch_size", "16",
                       "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "2", "TRAIN.WARMUP_EPOCHS", "1",
                       "EMA.ENABLE", "True", "EMA.DECAY", "0.9", *opts)


@pytest.fixture(scope="module")
def run_dir(small_demo, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("readable") / "run")
    proc = run_cli(train_args(small_demo, out))
    return out, proc.stdout


def eval_args(data, ckpt, out):
    return ["-cfg", DEMO_CFG, "-data_path", data, "-output", out, "-pretrained", ckpt, "-batch_size_eval", "5",
            "-opts", *TINY_RESMLP]


@pytest.fixture(scope="module")
def evaluated(run_dir, small_demo, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("readable_eval") / "ev1")
    proc = run_cli(["sh", "run_eval_multi.sh", *eval_args(small_demo, os.path.join(run_dir[0], "last.pdparams"),
                                                          out)], NPROC=1)
    return out, proc.stdout


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def read_matrix(path):
    return np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)


def assert_png(path, min_side=300):
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert min(img.shape[:2]) >= min_side and img.std() > 10, path   # not blank: drawn content
    return img


def check_class_report(folder, count, correct, names=CLASSES):
    """per_class_accuracy.csv and confusion_matrix.csv agree with each other and with the count / correct."""
    rows = read_rows(os.path.join(folder, "per_class_accuracy.csv"))
    assert [int(r["class"]) for r in rows] == list(range(8)) and [r["name"] for r in rows] == names
    images = np.array([int(r["images"]) for r in rows])
    hits = np.array([int(r["correct"]) for r in rows])
    assert images.sum() == count and hits.sum() == correct
    for r, n, k in zip(rows, images, hits):
        assert float(r["top1"]) == pytest.approx(100.0 * k / n, abs=0.006)
    cm = read_matrix(os.path.join(folder, "confusion_matrix.csv"))
    assert cm.shape == (8, 8) and cm.sum() == count and np.trace(cm) == correct
    np.testing.assert_array_equal(cm.sum(axis=1), images)
    np.testing.assert_array_equal(np.diag(cm), hits)
    assert_png(os.path.join(folder, "confusion_matrix.png"))
    return cm


def test_eval_writes_per_class_accuracy_and_confusion_matrix_with_progress(evaluated):
    out, stdout = evaluated
    metrics = read_json(os.path.join(out, "eval_metrics.json"))
    assert metrics["count"] == 64
    check_class_report(out, metrics["count"], metrics["correct"])
    # 13 batches of 5, REPORT_FREQ 4: lines at 20, 40, 60 images with throughput and ETA, then the total
    assert re.search(r"eval 20/64 images, [\d.]+ img/s, eta \d+:\d\d:\d\d", stdout), stdout
    assert re.search(r"eval 64/64 images, [\d.]+ img/s, \d+:\d\d:\d\d in all", stdout), stdout
    assert "per-class top-1: mean" in stdout


def test_one_and_two_processes_give_the_same_matrix(evaluated, run_dir, small_demo, tmp_path):
    out2 = str(tmp_path / "ev2")
    proc = run_cli(["sh", "run_eval_multi.sh", *eval_args(small_demo, os.path.join(run_dir[0], "last.pdparams"),
                                                          out2)], NPROC=2)
    assert "2 process(es)" in proc.stdout
    for name in ("confusion_matrix.csv", "per_class_accuracy.csv"):
        with open(os.path.join(evaluated[0], name)) as a, open(os.path.join(out2, name)) as b:
            assert a.read() == b.read(), name
    m2 = read_json(os.path.join(out2, "eval_metrics.json"))
    check_class_report(out2, m2["count"], m2["correct"])
    # rank 0 reports for both processes: its own images count twice until the exact total at the end
    assert re.search(r"eval 40/64 images, [\d.]+ img/s, eta", proc.stdout), proc.stdout
    assert "eval 64/64 images" in proc.stdout


def test_predict_report_on_a_list_and_on_class_folders(evaluated, run_dir, small_demo, tmp_path):
    ckpt = os.path.join(run_dir[0], "last.pdparams")
    predict = [sys.executable, os.path.join(REPO, "resmlp", "predict.py"), "-pretrained", ckpt,
               "-data_path", small_demo, "-batch_size", "16"]
    rep = str(tmp_path / "rep_list")
    proc = run_cli([*predict, "-image", os.path.join(small_demo, "val_list.txt"), "-report", rep])
    metrics = read_json(os.path.join(evaluated[0], "eval_metrics.json"))
    # the same images and weights as -eval: the same matrix, cell for cell
    np.testing.assert_array_equal(check_class_report(rep, 64, metrics["correct"]),
                                  read_matrix(os.path.join(evaluated[0], "confusion_matrix.csv")))
    assert re.search(r"predict 64/64 images, [\d.]+ img/s, \d+:\d\d:\d\d in all", proc.stderr), proc.stderr
    # a class-folder tree: images/<class>/*.jpg are labelled by their folder (all 192 train + val images)
    rep = str(tmp_path / "rep_folder")
    proc = run_cli([*predict, "-image", os.path.join(small_demo, "images"), "-report", rep])
    correct = int(re.search(r"top-1 on 192 labelled images: [\d.]+% \((\d+)\)", proc.stdout).group(1))
    check_class_report(rep, 192, correct)
    assert re.search(r"predict 160/192 images, [\d.]+ img/s, eta \d+:\d\d:\d\d", proc.stderr), proc.stderr
    # images without labels: -report says what it needs, before any prediction
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(os.path.join(small_demo, "images", CLASSES[0], "0000.jpg"), loose / "x.jpg")
    proc = run_cli([*predict, "-image", str(loose), "-report", str(tmp_path / "rep_none")], check=False)
    assert proc.returncode == 2 and "error: -report: no labelled images" in proc.stderr


def test_training_writes_summary_metrics_csv_and_curves(run_dir, small_demo):
    out, stdout = run_dir
    history = read_json(os.path.join(out, "metrics.json"))["history"]
    rows = read_rows(os.path.join(out, "metrics.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2] == [h["epoch"] for h in history]
    for key in ("train_loss", "lr", "epoch_time", "images_per_s", "wall_time", "val_top1", "val_correct",
                "val_ema_top1"):
        for r, h in zip(rows, history):
            assert float(r[key]) == pytest.approx(h[key], rel=1e-9), key
    assert float(rows[0]["lr"]) > 0
    curves = assert_png(os.path.join(out, "training_curves.png"))
    assert curves.shape[1] >= 3 * 400   # loss | lr | val top-1
    # the summary table: best and last top-1 of the live and the EMA weights, epochs, wall time, images/s
    assert re.search(r"summary of the run in .*: 2 of 2 epochs, wall time \d+:\d\d:\d\d \(training \d+:\d\d:\d\d, "
                     r"[\d.]+ images/s\)", stdout), stdout
    best = max(history, key=lambda h: h["val_top1"])
    line = re.search(r"\n\s+main\s+(\S+) \((\d+)\)\s+(\S+) \(2\)", stdout)
    assert line and float(line.group(1)) == pytest.approx(best["val_top1"], abs=0.006)
    assert float(line.group(3)) == pytest.approx(history[-1]["val_top1"], abs=0.006)
    assert re.search(r"\n\s+ema main\s+\S+ \(\d+\)\s+\S+ \(2\)", stdout)

    # a run resumed after it finished has nothing to train and writes them again
    os.remove(os.path.join(out, "metrics.csv"))
    os.remove(os.path.join(out, "training_curves.png"))
    proc = run_cli(train_args(small_demo, out, "MODEL.RESUME", "auto"))
    assert "nothing to train" in proc.stdout and "summary of the run" in proc.stdout
    assert len(read_rows(os.path.join(out, "metrics.csv"))) == 2
    assert_png(os.path.join(out, "training_curves.png"))


def test_heatmap_folder_writes_three_panels_per_image(tiny_checkpoint, small_demo, tmp_path):  # noqa: F811
    path = tiny_checkpoint[0]
    folder = tmp_path / "birds"
    for cls, name in ((CLASSES[0], "0000.jpg"), (CLASSES[0], "0001.jpg"), (CLASSES[5], "0000.jpg")):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(small_demo, "images", cls, name), folder / cls / name)
    out, maps = tmp_path / "heat", tmp_path / "maps"
    args = [sys.executable, os.path.join(REPO, "pim", "heatmap.py"), "-cfg", PIM_CFG, "-pretrained", path,
            "-data_path", small_demo, "-opts", *PIM_TINY]
    proc = run_cli([*args, "-image", str(folder), "-output", str(out), "-save_map", str(maps)])
    assert "wrote 3 heat maps under" in proc.stdout
    for rel in (f"{CLASSES[0]}/0000", f"{CLASSES[0]}/0001", f"{CLASSES[5]}/0000"):
        side = np.load(maps / f"{rel}.npy").shape
        assert side[0] == side[1]
        s = side[0]                                 # the shown (resized, cropped) image, one pixel per pixel
        img = assert_png(out / f"{rel}.png", min_side=s)
        h, w = img.shape[:2]
        assert 3 * s <= w <= 3 * s + 110 and s < h <= s + 90, (w, h, s)
        # three panels: the original (grey-ish photo) and the jet-coloured map differ at their centres
        mid, centres = h - 8 - s // 2, [8 + s // 2 + i * (s + 8) for i in range(3)]
        original, heat, overlay = (img[mid - 4:mid + 4, c - 4:c + 4].mean(axis=(0, 1)) for c in centres)
        assert np.abs(original - heat).max() > 20 and np.abs(overlay - heat).max() > 5
    assert "map of class" in proc.stdout and proc.stdout.count("written to") == 3
    # a folder -image takes an -output folder, not a PNG name
    proc = run_cli([*args, "-image", str(folder), "-output", str(tmp_path / "x.png")], check=False)
    assert proc.returncode == 2 and "-output is a folder" in proc.stderr


def test_class_counts_and_summary_units():
    from common.report import (CONFUSION_MAX_CLASSES, ClassCounts, metrics_csv_text, training_summary)
    c = ClassCounts(3).add([0, 1, 1, 2, -1, 2], [0, 2, 1, 2, 1, 0])
    np.testing.assert_array_equal(c.confusion, [[1, 0, 0], [0, 1, 1], [1, 0, 1]])
    back = ClassCounts.from_vector(3, c.vector() * 2)   # what an all-reduce over two equal ranks gives
    np.testing.assert_array_equal(back.confusion, 2 * c.confusion)
    assert back.images.tolist() == [2, 4, 4] and back.correct.tolist() == [2, 2, 2]
    big = ClassCounts(CONFUSION_MAX_CLASSES + 1).add([5, 7], [5, 1])
    assert big.confusion is None and big.vector().size == 2 * (CONFUSION_MAX_CLASSES + 1)
    assert big.images[5] == big.correct[5] == 1 and big.images[7] == 1 and big.correct[7] == 0
    # a PIM-like history: several heads, EMA, an epoch without validation
    history = [{"epoch": 1, "train_loss": 2.0, "epoch_time": 10.0, "images_per_s": 50.0, "wall_time": 11.0},
               {"epoch": 2, "train_loss": 1.5, "epoch_time": 10.0, "images_per_s": 30.0, "wall_time": 12.0,
                "val_top1": 60.0, "val_layer1/top1": 40.0, "val_ema_top1": 55.0},
               {"epoch": 3, "train_loss": 1.2, "epoch_time": 10.0, "images_per_s": 40.0, "wall_time": 12.0,
                "val_top1": 58.0, "val_layer1/top1": 45.0, "val_ema_top1": 61.0}]
    text = training_summary(history, 3, "combiner")
    assert "3 of 3 epochs, wall time 0:00:35 (training 0:00:30, 40.0 images/s)" in text
    assert re.search(r"combiner \(main\)\s+60.00 \(2\)\s+58.00 \(3\)", text)
    assert re.search(r"layer1\s+45.00 \(3\)\s+45.00 \(3\)", text)
    assert re.search(r"ema combiner \(main\)\s+61.00 \(3\)\s+61.00 \(3\)", text)
    rows = list(csv.DictReader(metrics_csv_text(history).splitlines()))
    assert len(rows) == 3 and rows[0]["val_top1"] == "" and rows[2]["val_layer1/top1"] == "45.0"


def test_heatmap_is_drawn_on_the_original_at_its_own_resolution(tiny_checkpoint, small_demo, tmp_path):  # noqa: F811
    from PIL import Image

    from common.data.transforms import CenterCrop, ResizeShortSide, view_box
    from pim.heatmap import on_original
    # 640 x 480, short side to 256, centre crop 224: the view spans x 108.9..529.3, y 30..450 of the original
    box = view_box([ResizeShortSide(256), CenterCrop(224)], (640, 480))
    np.testing.assert_allclose(box, (58 * 640 / 341, 30.0, (58 + 224) * 640 / 341, 450.0))
    full = on_original(np.ones((7, 7)), box, (640, 480))
    assert full.shape == (480, 640)
    assert np.isnan(full[:, :100]).all() and np.isnan(full[:20]).all() and (full[40:440, 120:520] == 1).all()
    # through the CLI: a 160 x 120 photo gives panels 160 px wide each, not the model's 80 px view
    src = Image.open(os.path.join(small_demo, "images", CLASSES[0], "0000.jpg")).resize((160, 120))
    photo = tmp_path / "wide.png"
    src.save(photo)
    out = tmp_path / "wide_heat.png"
    run_cli([sys.executable, os.path.join(REPO, "pim", "heatmap.py"), "-cfg", PIM_CFG, "-pretrained",
             tiny_checkpoint[0], "-data_path", small_demo, "-image", str(photo), "-output", str(out),
             "-opts", *PIM_TINY])
    h, w = assert_png(out, min_side=120).shape[:2]
    assert 3 * 160 <= w <= 3 * 160 + 110 and 120 < h <= 120 + 90, (w, h)
