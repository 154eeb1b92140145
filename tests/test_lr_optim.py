
import numpy as np
import paddle
import pytest

from common.config import get_default_config
from common.engine.lr import WarmupSchedule, build_scheduler
from common.engine.optim import build_optimizer, build_param_groups
from resmlp.resmlp import ResMlp


def test_warmup_then_cosine_values():
    s = WarmupSchedule(1.0, total_steps=110, steps_per_epoch=10, warmup_steps=10, warmup_start_lr=0.0, min_lr=0.1)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(5) == pytest.approx(0.5)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.1 + 0.9 * 0.5)          # half way through the cosine
    assert s.lr_at(110) == pytest.approx(0.1)
    # the scheduler object walks the same values, one optimizer step at a time
    seen = []
    for _ in range(12):
        seen.append(s.get_lr())
        s.step()
    assert seen[:3] == [0.0, pytest.approx(0.1), pytest.approx(0.2)]


def test_step_decay_counts_epochs_from_start():
    s = WarmupSchedule(0.03, total_steps=1000, steps_per_epoch=10, warmup_steps=30, warmup_start_lr=0.0,
                       name="step", decay_epochs=10, decay_rate=0.9)
    assert s.lr_at(15) == pytest.approx(0.015)          # in warm-up
    assert s.lr_at(99) == pytest.approx(0.03)           # epoch 9
    assert s.lr_at(100) == pytest.approx(0.027)         # epoch 10
    assert s.lr_at(250) == pytest.approx(0.03 * 0.81)   # epoch 25


def test_linear_scaling_and_warmup_epochs_from_config():
    cfg = get_default_config()
    cfg.TRAIN.BASE_LR, cfg.TRAIN.LINEAR_SCALED_LR, cfg.TRAIN.WARMUP_EPOCHS, cfg.TRAIN.EPOCHS = 0.1, 256, 2, 10
    cfg.TRAIN.WARMUP_START_LR = 0.0
    s = build_scheduler(cfg, steps_per_epoch=5, total_batch=64)
    assert s.base == pytest.approx(0.025)
    assert s.warmup_steps == 10 and s.total_steps == 50
    cfg.TRAIN.WARMUP_ITERS = 800
    assert build_scheduler(cfg, 5, 64).warmup_steps == 800


def tiny_resmlp():
    return ResMlp(num_classes=4, image_size=16, patch_size=8, embed_dim=8, depth=2)


def test_no_weight_decay_on_biases_norms_and_layer_scales():
    groups = build_param_groups(tiny_resmlp(), 0.05)
    by_wd = {g["weight_decay"]: set(g["names"]) for g in groups}
    decayed, plain = by_wd[0.05], by_wd[0.0]
    assert "mixer_layers.0.linear_tokens.weight" in decayed
    assert "mixer_layers.1.mlp_channels.fc1.weight" in decayed
    assert "head.weight" in decayed and "patch_embed.patch_embed.weight" in decayed
    for name in ("head.bias", "mixer_layers.0.ls1", "mixer_layers.0.norm1.alpha", "norm.beta",
                 "patch_embed.patch_embed.bias"):
        assert name in plain, name
    assert not decayed & plain


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_decay_applies_only_to_its_group(name):
    paddle.seed(0)
    model = tiny_resmlp()
    cfg = get_default_config()
    cfg.TRAIN.OPTIMIZER.NAME = name
    cfg.TRAIN.WEIGHT_DECAY = 0.5
    opt = build_optimizer(cfg, model, 0.1)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    (model(paddle.zeros([1, 3, 16, 16])) * 0).sum().backward()   # zero gradients: only decay moves weights
    opt.step()
    after = {n: p.numpy() for n, p in model.named_parameters()}
    np.testing.assert_allclose(after["head.weight"], before["head.weight"] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(after["mixer_layers.0.ls1"], before["mixer_layers.0.ls1"])
    np.testing.assert_array_equal(after["norm.alpha"], before["norm.alpha"])


def test_lr_multiplier_groups():
    paddle.seed(0)
    model = tiny_resmlp()
    cfg = get_default_config()
    cfg.TRAIN.OPTIMIZER.NAME = "SGD"
    cfg.TRAIN.OPTIMIZER.MOMENTUM = 0.0
    cfg.TRAIN.WEIGHT_DECAY = 0.0
    opt = build_optimizer(cfg, model, 0.1, lr_mult_fn=lambda n: 10.0 if n.startswith("head") else 1.0)
    x = paddle.rand([2, 3, 16, 16])
    model(x).sum().backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        mult = 10.0 if n.startswith("head") else 1.0
        np.testing.assert_allclose(p.numpy(), before[n] - 0.1 * mult * grads[n], rtol=1e-5, atol=1e-7)
