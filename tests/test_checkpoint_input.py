"""Checkpoint input: odd but legitimate files load, wrong ones are refused naming what does not fit, damaged ones say
so, and a resume that does not fit changes nothing."""
import os
import pickle
import types

import numpy as np
import paddle
import pytest

from common.checkpoint import CheckpointMismatchError, load_pretrained, read_checkpoint
from common.config import get_default_config
from common.engine.lr import build_scheduler
from common.engine.optim import build_optimizer
from common.engine.trainer import Trainer
from common.porting import CheckpointFormatError

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "porting")


def linear(seed):
    paddle.seed(seed)
    return paddle.nn.Linear(4, 3)


# --------------------------------------------------------------------------------------------------------------
# load_pretrained

@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_paddle_save_with_any_protocol_loads(tmp_path, protocol):
    """protocol 2 spells the array bytes as _codecs.encode(text, 'latin1'), which the safe loader allows."""
    src, dst = linear(1), linear(2)
    path = tmp_path / f"p{protocol}.pdparams"
    paddle.save(src.state_dict(), str(path), protocol=protocol)
    load_pretrained(dst, str(path), log=lambda m: None)
    np.testing.assert_array_equal(dst.weight.numpy(), src.weight.numpy())
    np.testing.assert_array_equal(dst.bias.numpy(), src.bias.numpy())


@pytest.mark.parametrize("writer", ["paddle", "pickle2", "pickle4"])
def test_float64_weights_load_into_a_float32_model_with_a_note(tmp_path, writer):
    src, dst = linear(1), linear(2)
    state = {k: v.numpy().astype(np.float64) for k, v in src.state_dict().items()}
    path = tmp_path / "f64.pdparams"
    if writer == "paddle":
        paddle.save(state, str(path))
    else:  # what plain numpy code writes
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=int(writer[-1]))
    logs = []
    load_pretrained(dst, str(path), log=logs.append)
    assert dst.weight.dtype == paddle.float32
    np.testing.assert_allclose(dst.weight.numpy(), src.weight.numpy(), rtol=1e-7)
    assert any("cast 2 tensor(s) from float64 to the model's float32" in m for m in logs), logs


@pytest.mark.parametrize("value, shown", [("abc", "weight (str 'abc')"), ({"w": 1}, "weight (dict)"),
                                          (3.5, "weight (float 3.5)"), (np.array(["a"]), "weight (dtype <U1)")])
def test_non_array_value_is_refused_with_its_key(tmp_path, value, shown):
    src, dst = linear(1), linear(2)
    state = {k: v.numpy() for k, v in src.state_dict().items()}
    state["weight"] = value
    path = tmp_path / "odd.pdparams"
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
    before = dst.weight.numpy().copy()
    with pytest.raises(CheckpointMismatchError, match="odd.pdparams does not fit the model") as err:
        load_pretrained(dst, str(path), log=lambda m: None)
    assert shown in str(err.value)
    np.testing.assert_array_equal(dst.weight.numpy(), before)


def test_float_values_for_an_integer_entry_are_refused(tmp_path):
    class WithCounter(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", paddle.zeros([1], dtype="int64"))

    path = tmp_path / "count.pdparams"
    paddle.save({"count": np.array([1.5])}, str(path))
    with pytest.raises(CheckpointMismatchError, match="count holds float64 values where the model keeps int64"):
        load_pretrained(WithCounter(), str(path), log=lambda m: None)



def test_weights_holding_nan_or_inf_are_refused_naming_them(tmp_path):
    """Paddle's CPU relu maps NaN to 0: NaN weights ahead of a ReLU give finite, constant logits, which no check
    of the outputs can tell from a bad model's. So the weights themselves are checked when they are loaded."""
    relu_net = paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.ReLU(), paddle.nn.Linear(3, 2))
    state = {k: v.numpy() for k, v in relu_net.state_dict().items()}
    state["0.weight"] = np.full_like(state["0.weight"], np.nan)
    relu_net.set_state_dict(state)
    assert np.isfinite(relu_net(paddle.ones([1, 4])).numpy()).all()   # why the outputs cannot tell
    state["2.bias"] = np.array([1.0, np.inf], dtype="float32")
    path = tmp_path / "nan.pdparams"
    paddle.save(state, str(path))
    from common.errors import NonFiniteError
    with pytest.raises(NonFiniteError, match=r"nan.pdparams: 2 tensor\(s\) hold NaN / inf values \(0.weight, 2.bias\)"):
        load_pretrained(relu_net, str(path), log=lambda m: None)

# --------------------------------------------------------------------------------------------------------------
# damaged files say so; only real torch / safetensors files get the port advice

def _good_file(tmp_path):
    path = tmp_path / "good.pdparams"
    paddle.save(linear(1).state_dict(), str(path))
    return path.read_bytes()


@pytest.mark.parametrize("cut, fragment", [
    (lambda d: b"", "the file is empty"),
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: b"hello, this is not a checkpoint\n", "does not start like"),
    (lambda d: b"PK\x03\x04" + b"\x00" * 60, "corrupt zip archive"),
    (lambda d: b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\": ", "corrupt safetensors"),
], ids=["empty", "half", "last-byte", "text", "zip", "safetensors"])
def test_damaged_file_says_it_is_damaged(tmp_path, cut, fragment):
    path = tmp_path / "x.pdparams"
    path.write_bytes(cut(_good_file(tmp_path)))
    with pytest.raises(CheckpointFormatError) as err:
        read_checkpoint(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path} is damaged or not a checkpoint (") and fragment in msg, msg
    assert "common.port" not in msg


@pytest.mark.parametrize("name", ["torch_zip.pt", "torch_legacy.pt"])
def test_real_torch_file_gets_the_port_advice(name):
    with pytest.raises(CheckpointMismatchError, match="is a PyTorch file, not a Paddle checkpoint; convert it first: "
                                                      "python -m common.port"):
        read_checkpoint(os.path.join(FIX, name))


def test_real_safetensors_file_gets_the_port_advice(tmp_path):
    from common.porting.reader import write_safetensors
    path = tmp_path / "w.safetensors"
    write_safetensors(str(path), {"w": np.ones((2, 2), np.float32)})
    with pytest.raises(CheckpointMismatchError, match="is a safetensors file, not a Paddle checkpoint"):
        read_checkpoint(str(path))


# --------------------------------------------------------------------------------------------------------------
# Trainer.resume

def make_trainer(optimizer="AdamW", seed=0, logs=None):
    cfg = get_default_config()
    cfg.defrost()
    cfg.TRAIN.OPTIMIZER.NAME = optimizer
    cfg.TRAIN.EPOCHS, cfg.TRAIN.WARMUP_EPOCHS = 3, 0
    paddle.seed(seed)
    model = paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.ReLU(), paddle.nn.Linear(3, 2))
    logger = types.SimpleNamespace(info=(logs if logs is not None else []).append)
    t = Trainer(cfg, None, model, "unused", logger, "cpu")
    t.scheduler = build_scheduler(cfg, steps_per_epoch=2, total_batch=8)
    t.optimizer = build_optimizer(cfg, model, t.scheduler)
    t.ema, t.scaler = None, None
    return t


def train_and_save(t, path, epoch=1):
    for _ in range(2):
        loss = t.model(paddle.ones([2, 4])).sum()
        loss.backward()
        t.optimizer.step()
        t.optimizer.clear_grad()
        t.scheduler.step()
        t.global_step += 1
    paddle.save(t.checkpoint_state(epoch), str(path))
    return path


def snapshot(t):
    return ({k: v.numpy().copy() for k, v in t.model.state_dict().items()},
            {k: (v.numpy().copy() if hasattr(v, "numpy") else v) for k, v in t.optimizer.state_dict().items()
             if k != "LR_Scheduler"},
            t.scheduler.last_epoch, t.start_epoch)


def assert_unchanged(t, before):
    after = snapshot(t)
    assert after[0].keys() == before[0].keys() and all(np.array_equal(after[0][k], before[0][k]) for k in after[0])
    assert after[1].keys() == before[1].keys()
    assert after[2:] == before[2:]


def test_resume_of_a_matching_checkpoint_restores_everything(tmp_path):
    src = make_trainer("AdamW", seed=1)
    path = train_and_save(src, tmp_path / "last.pdparams", epoch=2)
    logs = []
    dst = make_trainer("AdamW", seed=2, logs=logs)
    dst.resume(str(path))
    assert dst.start_epoch == 3 and dst.global_step == 2 and dst.scheduler.last_epoch == src.scheduler.last_epoch
    for k, v in src.model.state_dict().items():
        np.testing.assert_array_equal(dst.model.state_dict()[k].numpy(), v.numpy())
    moments = [k for k in dst.optimizer.state_dict() if "moment1" in k]
    assert len(moments) == 4, dst.optimizer.state_dict().keys()
    assert any("resumed from" in m for m in logs)


@pytest.mark.parametrize("keep_config", [True, False], ids=["config", "keys-only"])
def test_resume_with_another_optimizer_is_refused_before_anything_changes(tmp_path, keep_config):
    path = train_and_save(make_trainer("Momentum", seed=1), tmp_path / "momentum.pdparams")
    if not keep_config:  # without the stored config the optimizer state itself tells
        state = paddle.load(str(path))
        del state["config"]
        paddle.save(state, str(path))
    t = make_trainer("AdamW", seed=2)
    before = snapshot(t)
    with pytest.raises(CheckpointMismatchError) as err:
        t.resume(str(path))
    msg = str(err.value)
    assert "momentum.pdparams does not fit this run" in msg and "trained with Momentum" in msg and \
        "this run uses AdamW" in msg, msg
    assert_unchanged(t, before)


def test_resume_with_sgd_from_an_adamw_checkpoint_is_refused(tmp_path):
    path = train_and_save(make_trainer("AdamW", seed=1), tmp_path / "adamw.pdparams")
    t = make_trainer("SGD", seed=2)
    t.config.TRAIN.OPTIMIZER.MOMENTUM = 0.0
    t.optimizer = build_optimizer(t.config, t.model, t.scheduler)
    before = snapshot(t)
    with pytest.raises(CheckpointMismatchError, match="trained with AdamW.*this run uses SGD"):
        t.resume(str(path))
    assert_unchanged(t, before)


@pytest.mark.parametrize("drop, fragment", [
    (("lr_scheduler",), "lacks 'lr_scheduler'"),
    (("optimizer",), "lacks 'optimizer'"),
    (("optimizer", "lr_scheduler"), "is not a training checkpoint (no 'optimizer' and 'lr_scheduler' entries)"),
    (("epoch",), "lacks 'epoch'"),
], ids=["lr_scheduler", "optimizer", "both", "epoch"])
def test_resume_names_missing_entries(tmp_path, drop, fragment):
    path = train_and_save(make_trainer("AdamW", seed=1), tmp_path / "ck.pdparams")
    state = paddle.load(str(path))
    for key in drop:
        del state[key]
    paddle.save(state, str(path))
    t = make_trainer("AdamW", seed=2)
    before = snapshot(t)
    with pytest.raises(CheckpointMismatchError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        t.resume(str(path))
    assert_unchanged(t, before)


@pytest.mark.parametrize("key, value, fragment", [
    ("lr_scheduler", {"last_epoch": 3}, "'lr_scheduler' lacks last_lr"),
    ("lr_scheduler", "text", "'lr_scheduler' is a str, not a dict"),
    ("epoch", "3", "'epoch' is str '3', not an epoch number"),
    ("rng", {"numpy": ("MT19937", [1, 2])}, "random-number state is damaged"),
], ids=["scheduler-keys", "scheduler-type", "epoch", "rng"])
def test_resume_names_damaged_entries(tmp_path, key, value, fragment):
    path = train_and_save(make_trainer("AdamW", seed=1), tmp_path / "ck.pdparams")
    state = paddle.load(str(path))
    state[key] = value
    paddle.save(state, str(path))
    t = make_trainer("AdamW", seed=2)
    before = snapshot(t)
    with pytest.raises(CheckpointMismatchError, match=fragment):
        t.resume(str(path))
    assert_unchanged(t, before)


def test_resume_with_a_differently_shaped_optimizer_state_is_refused(tmp_path):
    path = train_and_save(make_trainer("AdamW", seed=1), tmp_path / "ck.pdparams")
    state = paddle.load(str(path))
    key = next(k for k in state["optimizer"] if k.startswith("0.weight_moment1"))
    state["optimizer"][key] = np.zeros((7, 7), np.float32)
    paddle.save(state, str(path))
    t = make_trainer("AdamW", seed=2)
    with pytest.raises(CheckpointMismatchError, match=r"optimizer state of the wrong shape: 0.weight_moment1_0 "
                                                      r"\(7, 7\) vs parameter \(4, 3\)"):
        t.resume(str(path))


def test_resume_of_another_model_is_refused_before_anything_changes(tmp_path):
    path = train_and_save(make_trainer("AdamW", seed=1), tmp_path / "ck.pdparams")
    t = make_trainer("AdamW", seed=2)
    t.model = paddle.nn.Sequential(paddle.nn.Linear(4, 5), paddle.nn.ReLU(), paddle.nn.Linear(5, 2))
    t.optimizer = build_optimizer(t.config, t.model, t.scheduler)
    before = snapshot(t)
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch: 0.weight checkpoint \(4, 3\) vs model"):
        t.resume(str(path))
    assert_unchanged(t, before)
