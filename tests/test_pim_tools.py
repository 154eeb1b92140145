"""PIM tools: infer.py (CSV, confusion matrix) and heatmap.py (class-discriminative map) through their CLIs."""
import csv
import functools
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import paddle  # noqa: E402

from pim.heatmap import blend, class_heatmap  # noqa: E402
from pim.infer import confusion_matrix  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

DEMO_CFG = os.path.join(REPO, "configs", "pim", "demo.yaml")
# a smaller model than the demo's, for speed
TINY = ["MODEL.PIM.EFFICIENTNET.WIDTH_MULT", "0.25", "MODEL.PIM.EFFICIENTNET.DEPTH_MULT", "0.3",
        "MODEL.PIM.FPN_SIZE", "16", "DATA.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """Random weights of the tiny model, with the BatchNorm statistics and the heads moved off their defaults."""
    from common.cli import build_parser, config_from_args
    from pim.method import PIMMethod
    method = PIMMethod()
    config = config_from_args(build_parser().parse_args(["-cfg", DEMO_CFG, "-opts", *TINY]), method.get_config())
    paddle.seed(3)
    model = method.build_model(config)
    rng = np.random.RandomState(3)
    state = {}
    for k, v in model.state_dict().items():
        a = v.numpy()
        if k.endswith("_variance"):
            a = rng.uniform(0.5, 1.5, a.shape).astype(a.dtype)
        elif k.startswith("fpn_classifier_") and ".3." in k:
            a = (rng.randn(*a.shape) * 0.5).astype(a.dtype)  # class-dependent token logits
        state[k] = a
    path = str(tmp_path_factory.mktemp("pim_tiny") / "tiny.pdparams")
    paddle.save(state, path)
    model.set_state_dict(state)
    model.eval()
    return path, method, model, config


def test_confusion_matrix_counts():
    cm = confusion_matrix([0, 1, 1, 2, -1, 2], [0, 2, 1, 2, 1, 0], 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [1, 0, 1]])


def test_infer_cli_csv_and_confusion_matrix(tiny_checkpoint, small_demo, tmp_path, capsys):
    path, _, _, _ = tiny_checkpoint
    out = tmp_path / "infer"
    proc = run_cli([sys.executable, os.path.join(REPO, "pim", "infer.py"), "-cfg", DEMO_CFG, "-pretrained", path,
                    "-image", os.path.join(small_demo, "val_list.txt"), "-data_path", small_demo,
                    "-output", str(out), "-opts", *TINY])
    assert "head 'combiner'" in proc.stdout
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64 and list(rows[0])[:4] == ["path", "label", "prediction", "probability"]
    labels = np.array([int(r["label"]) for r in rows])
    preds = np.array([int(r["prediction"]) for r in rows])
    assert all(0 < float(r["probability"]) <= 1 for r in rows)
    assert (labels >= 0).all() and {r["label_name"] for r in rows} >= {"barred_fine", "spotted_coarse"}
    cm = np.loadtxt(out / "confusion_matrix.csv", delimiter=",", dtype=np.int64)
    assert cm.shape == (8, 8) and cm.sum() == 64
    for t in range(8):
        for p in range(8):
            assert cm[t, p] == int(((labels == t) & (preds == p)).sum())
    accuracy = float((labels == preds).mean() * 100)
    assert f"top-1 {accuracy:.2f}%" in proc.stdout
    png = out / "confusion_matrix.png"
    assert png.stat().st_size > 10_000
    # in-process (the same entry point): a folder with class sub-folders gives labels; -head picks another head
    from pim.infer import main as infer_main
    assert infer_main(["-cfg", DEMO_CFG, "-pretrained", path, "-image", os.path.join(small_demo, "images"),
                       "-data_path", small_demo, "-head", "layer2", "-output", str(tmp_path / "folder"),
                       "-opts", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "head 'layer2'" in printed and "on 192 labelled images" in printed
    assert infer_main(["-cfg", DEMO_CFG, "-pretrained", path, "-image", small_demo, "-head", "layer9",
                       "-output", str(tmp_path / "x"), "-opts", *TINY]) == 2
    assert "layer9" in capsys.readouterr().err


def test_confusion_matrix_png_for_200_classes(tmp_path):
    from PIL import Image

    from pim.infer import plot_confusion_matrix
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 200, 2000)
    preds = np.where(rng.rand(2000) < 0.8, labels, rng.randint(0, 200, 2000))
    names = [f"{i:03d}.Some_Bird_Name_{i}" for i in range(200)]
    plot_confusion_matrix(confusion_matrix(labels, preds, 200), names, str(tmp_path / "cm.png"), "200 classes")
    w, h = Image.open(tmp_path / "cm.png").size
    assert w >= 200 * 16 * 0.9 and h >= w * 0.9   # about 0.16 inch (16 px at 100 dpi) per class


def test_heatmap_changes_with_the_target_class(tiny_checkpoint):
    _, method, model, config = tiny_checkpoint
    x = paddle.to_tensor(np.random.RandomState(1).randn(1, 3, 80, 80).astype(np.float32))
    for kind in ("tokens", "gradcam"):
        heads = functools.partial(method.eval_heads, model)
        maps = [class_heatmap(model, x, c, kind, "combiner", heads) for c in range(3)]
        for m in maps:
            assert m.shape == (80, 80) and m.min() >= 0 and m.max() <= 1 and m.std() > 0.01
        assert np.abs(maps[0] - maps[1]).max() > 0.05, kind
        assert np.abs(maps[1] - maps[2]).max() > 0.05, kind
    img = np.full((64, 64, 3), 128, np.uint8)
    heat = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    mixed = blend(img, heat, alpha=0.5, threshold=0.5)
    assert (mixed[:16] == 128).all() and (mixed[-16:] != 128).any()


def test_heatmap_cli(tiny_checkpoint, small_demo, tmp_path):
    from pim.heatmap import main as heatmap_main
    path, _, _, _ = tiny_checkpoint
    image = os.path.join(small_demo, "images", "barred_fine", "0000.jpg")
    args = ["-cfg", DEMO_CFG, "-pretrained", path, "-image", image, "-data_path", small_demo, "-opts", *TINY]
    png, raw = tmp_path / "heat_name.png", tmp_path / "heat_name.npy"
    proc = run_cli([sys.executable, os.path.join(REPO, "pim", "heatmap.py"), *args, "-target_class", "barred_fine",
                    "-output", str(png), "-save_map", str(raw)])
    assert "map of class barred_fine (tokens) written to" in proc.stdout and png.stat().st_size > 1000
    assert heatmap_main([*args, "-target_class", "3", "-output", str(tmp_path / "heat_3.png"),
                         "-save_map", str(tmp_path / "heat_3.npy")]) == 0
    first, other = np.load(raw), np.load(tmp_path / "heat_3.npy")
    assert first.shape == (80, 80) and np.abs(first - other).max() > 0.05
    assert heatmap_main([*args, "-target_class", "no_such_bird", "-output", str(tmp_path / "x.png")]) == 2
