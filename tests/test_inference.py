"""predict / export / ONNX through the real command lines, on a model trained on the demo data."""
import csv
import os
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from tests.helpers import REPO, TINY_RESMLP, read_json, resmlp_main, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")


def script(name):
    return [sys.executable, os.path.join(REPO, "resmlp", f"{name}.py")]


@pytest.fixture(scope="module")
def trained(small_demo, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("inf_train"))
    run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out, "-batch_size", "16",
                        "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "2"))
    return os.path.join(out, "last.pdparams")


def test_predict_on_the_val_list_agrees_with_eval(trained, small_demo, tmp_path):
    ev = str(tmp_path / "eval")
    run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", ev, "-eval", "-pretrained", trained,
                        "-opts", *TINY_RESMLP))
    metrics = read_json(os.path.join(ev, "eval_metrics.json"))
    out_csv = str(tmp_path / "pred.csv")
    proc = run_cli(script("predict") + ["-cfg", DEMO_CFG, "-pretrained", trained, "-data_path", small_demo,
                                        "-image", os.path.join(small_demo, "val_list.txt"), "-csv", out_csv,
                                        "-opts", *TINY_RESMLP])
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == metrics["count"] == 64
    correct = sum(int(r["prediction"]) == int(r["label"]) for r in rows)
    assert correct == metrics["correct"]
    names = open(os.path.join(small_demo, "classes.txt")).read().split()
    assert all(r["prediction_name"] == names[int(r["prediction"])] for r in rows)
    assert f"({correct})" in proc.stdout


def test_predict_a_single_image_and_a_folder(trained, small_demo):
    image = os.path.join(small_demo, "images", "barred_fine", "0000.jpg")
    proc = run_cli(script("predict") + ["-cfg", DEMO_CFG, "-pretrained", trained, "-data_path", small_demo,
                                        "-image", image, "-topk", "3", "-opts", *TINY_RESMLP])
    line = [l for l in proc.stdout.splitlines() if l.startswith(image)][0]
    probs = [float(x.split()[-1]) for x in line.split(": ", 1)[1].split(", ")]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    folder = os.path.join(small_demo, "images", "spotted_fine")
    proc = run_cli(script("predict") + ["-cfg", DEMO_CFG, "-pretrained", trained, "-data_path", small_demo,
                                        "-image", folder, "-batch_size", "8", "-opts", *TINY_RESMLP])
    assert sum(l.startswith(folder) for l in proc.stdout.splitlines()) == 24
    proc = run_cli(script("predict") + ["-cfg", DEMO_CFG, "-pretrained", trained, "-image", "/nonexistent.jpg",
                                        "-opts", *TINY_RESMLP], check=False)
    assert proc.returncode == 2 and "not found: /nonexistent.jpg" in proc.stderr


def test_exported_model_matches_dygraph_in_paddle_inference_and_onnx(trained, small_demo, tmp_path):
    from common.deploy import ExportedClassifier
    from common.inference import load_model
    from resmlp.method import ResMLPMethod
    import argparse

    out = str(tmp_path / "export")
    run_cli(script("export") + ["-cfg", DEMO_CFG, "-pretrained", trained, "-data_path", small_demo, "-output", out,
                                "-onnx", "-opts", *TINY_RESMLP])
    meta = read_json(os.path.join(out, "inference.json"))
    assert meta["image_size"] == 32 and meta["interpolation"] == "bicubic" and len(meta["class_names"]) == 8

    args = argparse.Namespace(cfg=DEMO_CFG, pretrained=trained, opts=TINY_RESMLP, data_path=small_demo)
    config, model = load_model(ResMLPMethod(), args)
    images = [Image.open(os.path.join(small_demo, "images", c, "0020.jpg"))
              for c in ("barred_fine", "striped_coarse", "checkered_fine")]
    paddle_clf = ExportedClassifier(out)
    batch = paddle_clf.preprocess(images)
    from common.data.transforms import build_eval_transform
    np.testing.assert_array_equal(batch[0], build_eval_transform(config)(images[0].convert("RGB")))
    with paddle.no_grad():
        ref = model(paddle.to_tensor(batch)).numpy()
    for backend in ("paddle", "onnx"):
        if backend == "onnx":
            pytest.importorskip("onnxruntime")
        got = ExportedClassifier(out, backend=backend).run(batch)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < 1e-5, (backend, rel)
        assert (got.argmax(1) == ref.argmax(1)).all()
