"""GPU code paths exercised on the CPU: the launcher's device arguments checked with Paddle's own parser, AMP O2
weights (float16 / bfloat16 parameters, cast by hand as O2 leaves them) saved by the trainer and loaded for
evaluation / prediction / export / fine-tuning, and a float32 EMA of a float16 model."""
import os
import sys

import numpy as np
import paddle
import pytest
from paddle.distributed.launch.context.device import Device

from common import launch
from tests.helpers import REPO, TINY_RESMLP, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")


def paddle_selects(cvd, gpus_arg):
    """What Paddle's launcher does with `--gpus gpus_arg` under CUDA_VISIBLE_DEVICES=cvd (positions it selects)."""
    device = Device()
    device.labels = cvd
    return device.get_selected_devices(gpus_arg)


@pytest.mark.parametrize("cvd, gpus, count, positions", [
    (None, None, 2, ["0", "1"]),
    ("1", None, 1, ["0"]),               # CUDA_VISIBLE_DEVICES=1 sh run_train_multi.sh
    ("2,3", None, 2, ["0", "1"]),        # a scheduler's assignment
    ("4,5", "0,1", 2, ["0", "1"]),       # GPUS by position beside CUDA_VISIBLE_DEVICES
    ("4,5", "5", 2, ["1"]),              # GPUS by the device's own id
    ("GPU-a1,GPU-b2", None, 2, ["0", "1"]),
])
def test_launcher_device_arguments_are_accepted_by_paddles_parser(cvd, gpus, count, positions):
    labels = launch.select_gpus(gpus, cvd, count)
    assert paddle_selects(cvd if cvd else ",".join(map(str, range(count))), ",".join(labels)) == positions


def test_the_old_positional_arguments_fail_in_paddles_parser():
    # what the launcher used to pass: positions, which Paddle reads as entries of CUDA_VISIBLE_DEVICES
    with pytest.raises(ValueError, match="is not in list"):
        paddle_selects("2,3", "0,1")


def test_gpus_naming_an_invisible_device_is_an_error():
    with pytest.raises(SystemExit, match="GPUS=7"):
        launch.select_gpus("7", "4,5", 2)


def _cast_like_o2(model, dtype):
    """AMP O2 leaves parameters in float16 / bfloat16 (Paddle does it on GPUs only; by hand here)."""
    return model.to(dtype=dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_an_o2_model_saves_float32_weights_that_load_everywhere(dtype, small_demo, tmp_path):
    from common.cli import build_parser, config_from_args
    from common.data.build import build_datasets
    from common.engine.trainer import Trainer
    from common.logger import setup_logger
    from resmlp.method import ResMLPMethod

    method = ResMLPMethod()
    out = str(tmp_path / "o2")
    args = build_parser().parse_args(["-cfg", DEMO_CFG, "-data_path", small_demo, "-output", out, "-batch_size", "16",
                                      "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "1"])
    config = config_from_args(args, method.get_config())
    model = method.build_model(config)
    train_set, val_set = build_datasets(config, method)
    trainer = Trainer(config, method, model, out, setup_logger(out, 0), "cpu")
    trainer.setup(train_set, val_set)
    _cast_like_o2(trainer.model, dtype)
    assert {str(p.dtype) for p in trainer.model.parameters()} == {f"paddle.{dtype}"}
    trainer.save(1, is_best=True)

    from common.checkpoint import load_pretrained, read_checkpoint
    saved = read_checkpoint(os.path.join(out, "best.pdparams"))["model"]
    assert {v.dtype for v in saved.values()} == {np.dtype("float32")}
    fresh = method.build_model(config)
    load_pretrained(fresh, os.path.join(out, "best.pdparams"), log=lambda m: None)
    # the float32 weights equal the O2 weights widened
    o2 = {k: v.astype("float32").numpy() for k, v in trainer.model.state_dict().items()}
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), o2[k])

    ckpt = os.path.join(out, "best.pdparams")
    tiny = ["-opts", *TINY_RESMLP]
    proc = run_cli([sys.executable, "resmlp/main_multi_gpu.py", "-cfg", DEMO_CFG, "-data_path", small_demo, "-eval",
                    "-pretrained", ckpt, "-output", str(tmp_path / "eval"), *tiny])
    assert "eval on 64 images" in proc.stdout
    run_cli([sys.executable, "resmlp/predict.py", "-cfg", DEMO_CFG, "-pretrained", ckpt, "-image",
             os.path.join(small_demo, "val_list.txt"), *tiny])
    run_cli([sys.executable, "resmlp/export.py", "-cfg", DEMO_CFG, "-pretrained", ckpt, "-output",
             str(tmp_path / "export"), *tiny])
    # fine-tuning from it, and loading float32 weights into an O2 (low-precision) model
    low = _cast_like_o2(method.build_model(config), dtype)
    load_pretrained(low, ckpt, log=lambda m: None)
    assert {str(p.dtype) for p in low.parameters()} == {f"paddle.{dtype}"}


def test_the_ema_of_a_float16_model_moves():
    from common.engine.ema import ModelEma
    model = _cast_like_o2(paddle.nn.Linear(8, 8), "float16")
    ema = ModelEma(model, decay=0.99996)
    before = ema.state["weight"].numpy().copy()
    with paddle.no_grad():
        model.weight.set_value((model.weight.astype("float32") + 1.0).astype("float16"))
    ema.update(model)
    after = ema.state["weight"].numpy()
    assert ema.state["weight"].dtype == paddle.float32
    np.testing.assert_allclose(after - before, np.full_like(before, 4e-5), rtol=1e-2)
    with ema.swapped_into(model):       # swapped in as the model's own dtype, and back
        assert model.weight.dtype == paddle.float16


def test_multi_process_validation_equals_re_evaluating_the_checkpoint(small_demo, tmp_path):
    """BatchNorm statistics drift apart per rank under DataParallel; validation uses rank 0's (the checkpoint's)."""
    import shutil
    from tests.helpers import read_json
    from transfer.demo_split import make_demo_split
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(os.path.join(small_demo, "images"), data / "images")
    for name in ("train_list.txt", "val_list.txt", "classes.txt"):
        shutil.copy(os.path.join(small_demo, name), data / name)
    make_demo_split(str(data))
    cfg = os.path.join(REPO, "configs", "transfer", "demo_source.yaml")
    quiet = ["VISUALDL", "False", "DATA.NUM_WORKERS", "0", "TRAIN.EPOCHS", "1"]
    out = str(tmp_path / "run")
    run_cli(["sh", "run_train_multi.sh", "-cfg", cfg, "-data_path", str(data), "-output", out, "-batch_size", "8",
             "-opts", *quiet], NPROC=2)
    trained = read_json(os.path.join(out, "metrics.json"))["history"][-1]
    ev = str(tmp_path / "eval")
    run_cli([sys.executable, "transfer/main_multi_gpu.py", "-cfg", cfg, "-data_path", str(data), "-output", ev,
             "-eval", "-pretrained", os.path.join(out, "last.pdparams"), "-opts", *quiet])
    again = read_json(os.path.join(ev, "eval_metrics.json"))
    assert again["count"] == trained["val_count"]
    assert again["correct"] == trained["val_correct"]
    assert again["loss"] == pytest.approx(trained["val_loss"], rel=1e-5)


def test_resume_auto_is_decided_by_rank_0(tmp_path, monkeypatch):
    """Nodes without a shared file system: rank 1 does not see rank 0's last.pdparams (or sees a stale one)."""
    from common import dist, runner
    from common.config import get_default_config
    config = get_default_config()
    config.SAVE.OUTPUT = str(tmp_path)
    config.MODEL.RESUME = "auto"
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    rank0_path = os.path.join(str(tmp_path), "last.pdparams")
    # this process plays rank 1, which lacks the file rank 0 found: it must not start a fresh run on its own
    monkeypatch.setattr(dist, "all_gather_object", lambda obj: [rank0_path, obj])
    with pytest.raises(FileNotFoundError, match="rank 0 has it"):
        runner.resolve_resume(config)
    # rank 0 found nothing: a stale file on this node is ignored, every rank starts afresh
    with open(rank0_path, "wb") as f:
        f.write(b"stale")
    monkeypatch.setattr(dist, "all_gather_object", lambda obj: ["", obj])
    assert runner.resolve_resume(config) == ""


def test_a_process_uses_the_gpu_the_launcher_selected(monkeypatch):
    from common import dist
    chosen = []
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(paddle, "set_device", chosen.append)
    monkeypatch.setenv("FLAGS_selected_gpus", "3")      # e.g. GPUS=3 with one process
    monkeypatch.setattr(dist, "world_size", lambda: 1)
    assert dist.setup_device() == "gpu:3" and chosen == ["gpu:3"]
