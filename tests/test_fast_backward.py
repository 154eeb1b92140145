"""The CPU training shortcuts of common/layers.py (hand-written backwards, token gathers) compute the same outputs and
gradients as the plain Paddle ops they replace, and Swin's gather path equals its roll/reshape path."""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from common import layers
from common.backbones import swin

TOL = 1e-5


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def tensor(rng, shape, grad=True):
    t = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    t.stop_gradient = not grad
    return t


def output_and_grads(fn, inputs, dy):
    y = fn()
    paddle.autograd.backward([y], [dy])
    out = [y.numpy()] + [t.grad.numpy().copy() for t in inputs]
    for t in inputs:
        t.clear_gradient()
    return out


def assert_same(fast, plain, inputs, dy):
    assert layers.fast_cpu_backward(inputs[0])
    for got, want in zip(output_and_grads(fast, inputs, dy), output_and_grads(plain, inputs, dy)):
        assert rel(got, want) < TOL


def test_linear_scale_shift_and_token_mix_match_the_plain_ops():
    rng = np.random.default_rng(0)
    b, n, c, h = 3, 5, 4, 7
    x = tensor(rng, (b, n, c))
    lin = layers.Linear(c, h)
    assert_same(lambda: lin(x), lambda: F.linear(x, lin.weight, lin.bias), [x, lin.weight, lin.bias],
                tensor(rng, (b, n, h), False))
    alpha, beta, ls = tensor(rng, (1, 1, c)), tensor(rng, (1, 1, c)), tensor(rng, (c,))
    dy = tensor(rng, (b, n, c), False)
    assert_same(lambda: layers.scale_shift(x, alpha, beta), lambda: x * alpha + beta, [x, alpha, beta], dy)
    assert_same(lambda: layers.scale_shift(x, ls), lambda: x * ls, [x, ls], dy)
    tokens = nn.Linear(n, n)
    assert_same(lambda: layers.token_mix(x, tokens), lambda: tokens(x.transpose([0, 2, 1])).transpose([0, 2, 1]),
                [x, tokens.weight, tokens.bias], dy)


def test_frozen_weights_get_no_gradient():
    rng = np.random.default_rng(1)
    x = tensor(rng, (2, 3, 4))
    lin = layers.Linear(4, 5)
    lin.weight.stop_gradient = True
    lin(x).sum().backward()
    assert lin.weight.grad is None and lin.bias.grad is not None and x.grad is not None


def test_add_over_batch_and_permute_tokens_match_the_plain_ops():
    rng = np.random.default_rng(2)
    x, bias = tensor(rng, (4, 3, 5, 5)), tensor(rng, (1, 3, 5, 5))
    assert_same(lambda: layers.add_over_batch(x, bias), lambda: x + bias, [x, bias], tensor(rng, (4, 3, 5, 5), False))
    order = rng.permutation(6)
    x = tensor(rng, (2, 6, 3))
    fast = lambda: layers.permute_tokens(x, paddle.to_tensor(order), paddle.to_tensor(np.argsort(order)))  # noqa
    assert_same(fast, lambda: x[:, paddle.to_tensor(order)], [x], tensor(rng, (2, 6, 3), False))


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_gather_path_equals_roll_and_window_reshapes(shift):
    paddle.seed(0)
    blk = swin.SwinBlock(8, (8, 8), 2, 4, shift)
    x = tensor(np.random.default_rng(3), (2, 64, 8))
    dy = tensor(np.random.default_rng(4), (2, 64, 8), False)
    params = [x] + [p for p in blk.parameters() if not p.stop_gradient]
    assert_same(lambda: blk(x), lambda: blk.forward_windows(x), params, dy)


def test_patch_merging_gather_equals_strided_slices():
    paddle.seed(0)
    merge = swin.PatchMerging((4, 4), 3)
    x = tensor(np.random.default_rng(5), (2, 16, 3), grad=False)
    g = x.reshape([2, 4, 4, 3])
    cat = paddle.concat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], axis=-1)
    want = merge.reduction(merge.norm(cat.reshape([2, 4, 12])))
    assert rel(merge(x).numpy(), want.numpy()) < TOL


def test_drop_path_keeps_timms_arithmetic_and_gradient():
    """The lean drop path (its backward keeps only the per-sample factor) draws the same mask from the same seed and
    gives timm's x * (mask / keep) and its gradient exactly; in evaluation it is the identity."""
    rng = np.random.default_rng(5)
    x, dy = tensor(rng, [8, 6, 4]), tensor(rng, [8, 6, 4], grad=False)
    paddle.seed(11)
    y = layers.drop_path(x, 0.25, training=True)
    paddle.autograd.backward([y], [dy])
    paddle.seed(11)
    scale = paddle.floor(0.75 + paddle.rand([8, 1, 1])) / 0.75
    kept = scale.numpy().reshape(-1)
    assert 0 < (kept == 0).sum() < 8                  # some branches dropped, some kept, at this seed
    np.testing.assert_array_equal(y.numpy(), (x * scale).numpy())
    np.testing.assert_array_equal(x.grad.numpy(), (dy * scale).numpy())
    assert layers.drop_path(x, 0.25, training=False) is x
    with paddle.no_grad():   # no graph: the plain product
        np.testing.assert_array_equal(layers.drop_path(x, 0.0, training=True).numpy(), x.numpy())


@pytest.mark.parametrize("shape", [(3, 5, 8), (64, 96)])
def test_layer_norm_backward_matches_paddles(shape):
    """Rows with a large mean against their spread (a residual stream) and a non-trivial weight and bias."""
    rng = np.random.default_rng(2)
    c = shape[-1]
    x = paddle.to_tensor((rng.standard_normal(shape) * 0.5 + 4.0).astype("float32"))
    x.stop_gradient = False
    ln = layers.LayerNorm(c, epsilon=1e-6)
    ln.weight.set_value(tensor(rng, (c,)))
    ln.bias.set_value(tensor(rng, (c,)))
    assert isinstance(ln, nn.LayerNorm) and list(ln.state_dict()) == ["weight", "bias"]
    assert_same(lambda: ln(x), lambda: F.layer_norm(x, [c], ln.weight, ln.bias, 1e-6), [x, ln.weight, ln.bias],
                tensor(rng, shape, False))
