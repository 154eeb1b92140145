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


@pytest.mark.parametrize("resize", ["interpolate_op", "matrix_products"])
def test_graphs_with_a_bilinear_resize_run_in_paddle_inference(resize, tmp_path):
    """A graph with Paddle's bilinear_interp op (no oneDNN kernel from PIR in Paddle 3.3) still runs, on the plain
    kernels; the suite's resize_bilinear keeps oneDNN and must stay exact there (its 4-D broadcast form was not)."""
    import paddle.nn as nn
    import paddle.nn.functional as F

    from common.deploy import _uses_unsupported_onednn_ops, create_predictor
    from common.layers import resize_bilinear

    class Merge(nn.Layer):   # an FPN-like top-down merge: 1x1 convs, resize the coarse map, add
        def __init__(self):
            super().__init__()
            self.fine, self.coarse = nn.Conv2D(3, 16, 1), nn.Conv2D(3, 16, 3, stride=2, padding=1)

        def forward(self, x):
            fine, coarse = self.fine(x), self.coarse(x)
            if resize == "interpolate_op":
                up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            else:
                up = resize_bilinear(coarse, fine.shape[-2:])
            return fine + up

    paddle.seed(0)
    model = Merge()
    model.eval()
    x = np.random.RandomState(0).rand(4, 3, 9, 9).astype("float32")
    ref = model(paddle.to_tensor(x)).numpy()
    prefix = str(tmp_path / "model")
    paddle.jit.save(paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([None, 3, 9, 9], "float32")],
                                         full_graph=True), prefix)
    graph = prefix + ".json"
    assert _uses_unsupported_onednn_ops(graph) == (resize == "interpolate_op")
    predictor = create_predictor(graph, prefix + ".pdiparams", threads=1)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(x.shape)
    handle.copy_from_cpu(x)
    predictor.run()
    out = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
