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
    from common.engine.trainer import Trainer, build_datasets
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
