"""predict.py / export.py of Dynamic MLP (metadata input) and PIM (the combiner, square resize) through the real
command lines: predictions equal -eval, and the exported model (Paddle Inference and ONNX Runtime, preprocessing
from inference.json) gives the dygraph logits."""
import argparse
import csv
import os
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from common.data.datasets import read_list_file
from tests.helpers import REPO, read_json, run_cli

CASES = {
    # method folder, demo config, extra -opts
    "dynamic_mlp": ("configs/dynamic_mlp/demo.yaml", ["VISUALDL", "False"]),
    "pim": ("configs/pim/demo.yaml", ["VISUALDL", "False", "DATA.SQUARE_RESIZE", "True"]),   # exercises inference.json's resize_mode
}


def method_of(folder):
    if folder == "dynamic_mlp":
        from dynamic_mlp.method import DynamicMLPMethod
        return DynamicMLPMethod()
    from pim.method import PIMMethod
    return PIMMethod()


def script(folder, name):
    return [sys.executable, os.path.join(REPO, folder, f"{name}.py")]


@pytest.fixture(params=sorted(CASES))
def case(request, small_demo, tmp_path):
    """A seeded, randomly initialised model of the method's demo config, saved as a .pdparams file."""
    from common.cli import build_parser, config_from_args
    folder = request.param
    cfg, opts = CASES[folder]
    cfg = os.path.join(REPO, cfg)
    method = method_of(folder)
    config = config_from_args(build_parser().parse_args(["-cfg", cfg, "-opts", *opts]), method.get_config())
    paddle.seed(7)
    model = method.build_model(config)
    ckpt = str(tmp_path / "model.pdparams")
    paddle.save(model.state_dict(), ckpt)
    return folder, cfg, opts, ckpt


def test_predict_agrees_with_eval(case, small_demo, tmp_path):
    folder, cfg, opts, ckpt = case
    ev = str(tmp_path / "eval")
    run_cli(script(folder, "main_multi_gpu") + ["-cfg", cfg, "-data_path", small_demo, "-output", ev, "-eval",
                                                "-pretrained", ckpt, "-opts", *opts])
    metrics = read_json(os.path.join(ev, "eval_metrics.json"))
    # the fast path: the same evaluation through the exported model in Paddle Inference
    fast = str(tmp_path / "eval_predictor")
    proc = run_cli(script(folder, "main_multi_gpu") + ["-cfg", cfg, "-data_path", small_demo, "-output", fast,
                                                       "-eval", "-predictor", "-pretrained", ckpt, "-opts", *opts])
    assert "through the exported model in Paddle Inference" in proc.stdout + proc.stderr
    fast_metrics = read_json(os.path.join(fast, "eval_metrics.json"))
    assert sorted(fast_metrics) == sorted(metrics)   # every head, as dygraph reports them (PIM: six)
    for key in metrics:
        if not key.endswith("loss"):
            assert fast_metrics[key] == metrics[key], key
    assert abs(fast_metrics["loss"] - metrics["loss"]) <= 1e-5 * max(1.0, abs(metrics["loss"]))
    out_csv = str(tmp_path / "pred.csv")
    run_cli(script(folder, "predict") + ["-cfg", cfg, "-pretrained", ckpt, "-data_path", small_demo, "-image",
                                         os.path.join(small_demo, "val_list.txt"), "-csv", out_csv,
                                         "-opts", *opts])
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["count"] == 64
    assert sum(int(r["prediction"]) == int(r["label"]) for r in rows) == metrics["correct"]


def test_export_matches_dygraph_in_paddle_inference_and_onnx(case, small_demo, tmp_path):
    from common.deploy import ExportedClassifier
    from common.inference import load_model
    folder, cfg, opts, ckpt = case
    out = str(tmp_path / "export")
    run_cli(script(folder, "export") + ["-cfg", cfg, "-pretrained", ckpt, "-data_path", small_demo, "-output", out,
                                        "-onnx", "-opts", *opts])
    meta = read_json(os.path.join(out, "inference.json"))
    method = method_of(folder)
    config, model = load_model(method, argparse.Namespace(cfg=cfg, pretrained=ckpt, opts=opts, data_path=None))
    assert meta["head"] == method.main_head_of(model) and len(meta["class_names"]) == 8
    assert meta["resize_mode"] == ("square" if config.DATA.SQUARE_RESIZE else "short_side")
    assert [i["name"] for i in meta["inputs"]] == ["image"] + [n for n, _, _ in method.export_inputs(config)]

    samples = read_list_file(os.path.join(small_demo, "val_list.txt"), small_demo)[::9][:6]
    images = [Image.open(s.path).convert("RGB") for s in samples]
    transform, meta_fn = method.eval_transform(config), method.meta_fn(config)
    batch = np.stack([transform(img) for img in images])
    extras = [np.stack([meta_fn(s) for s in samples]).astype("float32")] if meta_fn else []
    assert len(extras) == len(meta["inputs"]) - 1
    with paddle.no_grad():
        outputs = model(paddle.to_tensor(batch), *[paddle.to_tensor(e) for e in extras])
        ref = method.eval_heads(model, outputs)[method.main_head_of(model)].numpy()
    for backend in ("paddle", "onnx"):
        clf = ExportedClassifier(out, backend=backend)
        np.testing.assert_allclose(clf.preprocess(images), batch, rtol=0, atol=1e-6)   # same resize mode and crop
        got = clf.run(clf.preprocess(images), *extras)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < 1e-5, (backend, rel)
        assert (got.argmax(1) == ref.argmax(1)).all(), backend
        probs = clf.predict_images(images, *extras)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
