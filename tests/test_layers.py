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
