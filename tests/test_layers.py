"""Shared layers whose results users see through every model that uses them."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from common.layers import bilinear_matrix, resize_bilinear


@pytest.mark.parametrize("src,dst", [((7, 7), (14, 14)), ((5, 9), (12, 7)), ((3, 3), (5, 5)), ((6, 4), (6, 4)),
                                     ((1, 1), (3, 2))])
def test_resize_bilinear_matches_interpolate_and_torch(src, dst):
    torch = pytest.importorskip("torch")
    x = np.random.RandomState(0).randn(2, 3, *src).astype("float32")
    ours = resize_bilinear(paddle.to_tensor(x), dst).numpy()
    op = F.interpolate(paddle.to_tensor(x), size=list(dst), mode="bilinear", align_corners=False,
                       align_mode=0).numpy()
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear",
                                          align_corners=False).numpy()
    assert ours.shape == (2, 3) + tuple(dst)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(ours, op, rtol=0, atol=2e-6)


def test_bilinear_rows_are_two_taps_that_sum_to_one():
    m = bilinear_matrix(7, 14)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert ((m > 0).sum(axis=1) <= 2).all()


def test_resize_bilinear_passes_gradients():
    x = paddle.to_tensor(np.random.RandomState(1).randn(1, 2, 3, 3).astype("float32"), stop_gradient=False)
    resize_bilinear(x, (6, 6)).sum().backward()
    # every output pixel is a convex blend of inputs, so the gradient of the sum is the number of outputs
    assert x.grad is not None and np.allclose(x.grad.numpy().sum(), 2 * 36.0, atol=1e-4)


@pytest.mark.parametrize("src,dst", [((7, 7), (14, 14)), ((5, 9), (12, 7)), ((6, 4), (6, 4))])
def test_resize_bilinear_gradient_equals_interpolates(src, dst):
    """The training resize has its own backward (dy @ A^T, keeping nothing of the forward): the input gradient for a
    random upstream gradient equals Paddle's bilinear_interp gradient."""
    rng = np.random.RandomState(2)
    x = rng.randn(2, 3, *src).astype("float32")
    dy = paddle.to_tensor(rng.randn(2, 3, *dst).astype("float32"))
    ours, ref = (paddle.to_tensor(x, stop_gradient=False) for _ in range(2))
    (resize_bilinear(ours, dst) * dy).sum().backward()
    (F.interpolate(ref, size=list(dst), mode="bilinear", align_corners=False, align_mode=0) * dy).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), ref.grad.numpy(), rtol=0, atol=1e-5)


def _malloc_in_use_mb():
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc's mallinfo2")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2 ** 20


def test_resize_bilinear_keeps_no_activation_for_its_backward():
    """In training its backward holds only the resize matrices: what stays allocated after the forward is the
    output (16 MB here), not also the input and the half-resized intermediate Paddle's matmuls kept (4 + 8 MB)."""
    x = paddle.to_tensor(np.ones((1, 64, 128, 128), "float32"), stop_gradient=False)
    resize_bilinear(x * 2.0, (256, 256)).sum().backward()     # warm-up: the resize matrices are cached
    x.clear_gradient()
    before = _malloc_in_use_mb()
    out = resize_bilinear(x * 2.0, (256, 256))                # the doubled input is used by the resize only
    kept = _malloc_in_use_mb() - before
    assert kept < 16 + 3, kept
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy()[0, 0, 5:8, 5:8], np.full((3, 3), 2.0 * 4), atol=1e-4)


@pytest.mark.parametrize("grad", [False, True])
def test_linear_cpu_forward_equals_f_linear(grad):
    """The suite's Linear computes x @ W + b on CPU as one GEMM with the bias folded in (evaluation and training):
    the same numbers as F.linear to float rounding, 3-D input and output shapes kept."""
    from common.layers import Linear
    rng = np.random.RandomState(3)
    layer = Linear(24, 40)
    layer.bias.set_value(rng.randn(40).astype("float32"))
    x = paddle.to_tensor(rng.randn(2, 7, 24).astype("float32"), stop_gradient=not grad)
    with paddle.set_grad_enabled(grad):
        got = layer(x)
    want = F.linear(x, layer.weight, layer.bias)
    assert list(got.shape) == [2, 7, 40]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
