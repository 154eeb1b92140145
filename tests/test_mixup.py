"""Mixup / CutMix on paddle batches (common/data/mixup.py)."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import pytest  # noqa: E402

from common.data.mixup import Mixup, cutmix_bbox, mixup_target, one_hot  # noqa: E402

K = 7


def _const_batch(n, h=16, w=32, c=2):
    """Sample i is filled with the value i, so every output pixel tells which sample it came from."""
    vals = np.arange(n, dtype="float32").reshape(n, 1, 1, 1)
    return paddle.to_tensor(np.broadcast_to(vals, (n, c, h, w)).copy())


def _labels(n):
    return paddle.to_tensor(np.arange(n) % K, dtype="int64")


def _lam_from_targets(targets, labels, smoothing):
    """Weight of each sample's own label after mixing (partners have different labels here)."""
    t = targets.numpy()
    off = smoothing / K
    own = t[np.arange(len(labels)), labels]
    return (own - off) / (1.0 - smoothing)


# ---------------------------------------------------------------- construction

@pytest.mark.parametrize("bad", [None, 0, -3])
def test_num_classes_required(bad):
    with pytest.raises(ValueError, match="num_classes"):
        Mixup(num_classes=bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        Mixup(num_classes=K, mode="row")
    with pytest.raises(ValueError, match="cutmix_minmax"):
        Mixup(num_classes=K, cutmix_minmax=(0.8, 0.2))
    with pytest.raises(ValueError, match="label_smoothing"):
        Mixup(num_classes=K, label_smoothing=1.0)


def test_enabled_flag():
    assert Mixup(num_classes=K).mixup_enabled
    assert not Mixup(num_classes=K, mixup_alpha=0, cutmix_alpha=0).mixup_enabled
    assert not Mixup(num_classes=K, prob=0.0).mixup_enabled
    assert Mixup(num_classes=K, mixup_alpha=0, cutmix_alpha=0, cutmix_minmax=(0.2, 0.8)).mixup_enabled


# ---------------------------------------------------------------- targets

def test_one_hot_and_smoothing_values():
    y = one_hot(paddle.to_tensor([2, 0], dtype="int64"), 4, on_value=0.9, off_value=0.1)
    np.testing.assert_allclose(y.numpy(), [[0.1, 0.1, 0.9, 0.1], [0.9, 0.1, 0.1, 0.1]], rtol=1e-6)
    t = mixup_target(paddle.to_tensor([1, 3, 5], dtype="int64"), 10, lam=1.0, smoothing=0.1)
    assert t.shape == [3, 10] and t.dtype == paddle.float32
    expected = np.full((3, 10), 0.01, "float32")
    expected[[0, 1, 2], [1, 3, 5]] = 0.91  # on = 1 - s + s / K
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-6)


def test_mixup_target_formula_and_row_sums():
    labels = paddle.to_tensor([0, 1, 2, 3], dtype="int64")
    t = mixup_target(labels, 5, lam=0.3, smoothing=0.2).numpy()
    off, on = 0.2 / 5, 1 - 0.2 + 0.2 / 5
    y = np.full((4, 5), off)
    y[np.arange(4), [0, 1, 2, 3]] = on
    np.testing.assert_allclose(t, 0.3 * y + 0.7 * y[::-1], rtol=1e-6)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    per_sample = mixup_target(labels, 5, lam=np.array([1.0, 0.5, 0.5, 0.2]), smoothing=0.0).numpy()
    np.testing.assert_allclose(per_sample[3], [0.8, 0, 0, 0.2, 0], atol=1e-7)


# ---------------------------------------------------------------- cutmix box

def test_cutmix_bbox_axes_on_non_square_images():
    rng = np.random.default_rng(0)
    shape = (4, 3, 16, 32)  # H = 16 rows, W = 32 columns
    interior = 0
    for _ in range(300):
        (y0, y1, x0, x1), lam = cutmix_bbox(shape, 0.75, rng)  # sqrt(1 - 0.75) = 0.5 -> 8 x 16 box
        assert 0 <= y0 <= y1 <= 16 and 0 <= x0 <= x1 <= 32
        assert y1 - y0 <= 8 and x1 - x0 <= 16
        assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 512)
        if (y1 - y0, x1 - x0) == (8, 16):
            interior += 1
    assert interior > 50


def test_cutmix_bbox_minmax_stays_inside():
    rng = np.random.default_rng(1)
    for _ in range(200):
        (y0, y1, x0, x1), lam = cutmix_bbox((2, 3, 20, 40), 0.5, rng, ratio_minmax=(0.2, 0.8))
        assert 0 <= y0 < y1 <= 20 and 0 <= x0 < x1 <= 40
        assert 4 <= y1 - y0 <= 16 and 8 <= x1 - x0 <= 32
        assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 800)


def test_batch_cutmix_box_and_lam_on_non_square_input():
    n, h, w, smoothing = 6, 16, 32, 0.1
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K, label_smoothing=smoothing)
    labels = _labels(n)
    interior = 0
    for seed in range(40):
        x = _const_batch(n, h, w)
        out, targets, _ = mix(x, labels, np.random.default_rng(seed))
        out = out.numpy()
        assert out.shape == (n, 2, h, w)
        lam = _lam_from_targets(targets, labels.numpy(), smoothing)
        masks = []
        for i in range(n):
            partner = n - 1 - i
            assert np.isin(out[i], [i, partner]).all()
            pasted = (out[i] == partner).all(axis=0)
            masks.append(pasted)
            area = pasted.mean()
            assert lam[i] == pytest.approx(1 - area, abs=1e-6)  # lam corrected to the pasted fraction
            if pasted.any():
                rows, cols = np.where(pasted)
                y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                assert pasted.sum() == (y1 - y0) * (x1 - x0)  # a rectangle
                assert y1 <= h and x1 <= w
                if y0 > 0 and x0 > 0 and y1 < h and x1 < w:
                    # unclipped boxes scale both sides by sqrt(1 - lam): twice as wide as high here
                    assert (x1 - x0) in (2 * (y1 - y0), 2 * (y1 - y0) + 1)
                    interior += i == 0
        assert all(np.array_equal(masks[0], m) for m in masks)  # one box for the whole batch
        np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-5)
    assert interior >= 3


def test_input_not_modified():
    x = _const_batch(4)
    ref = x.numpy().copy()
    Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K)(x, _labels(4), np.random.default_rng(0))
    Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=K)(x, _labels(4), np.random.default_rng(0))
    assert np.array_equal(x.numpy(), ref)


# ---------------------------------------------------------------- mixup + extras

def test_batch_mixup_extras_share_lambda_and_pairing():
    n, smoothing = 4, 0.1
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=K, label_smoothing=smoothing)
    labels = _labels(n)
    meta = paddle.to_tensor(np.random.RandomState(0).randn(n, 3).astype("float32"))
    meta2 = paddle.to_tensor(np.random.RandomState(1).randn(n, 2, 2).astype("float32"))
    for seed in range(5):
        out, targets, extras = mix(_const_batch(n), labels, np.random.default_rng(seed), [meta, meta2])
        out = out.numpy()
        assert len(extras) == 2 and extras[0].shape == [n, 3] and extras[1].shape == [n, 2, 2]
        # image 0 = lam * 0 + (1 - lam) * 3
        lam = 1 - out[0, 0, 0, 0] / (n - 1)
        np.testing.assert_allclose(out[1], lam * 1 + (1 - lam) * 2, rtol=1e-5)
        np.testing.assert_allclose(_lam_from_targets(targets, labels.numpy(), smoothing), lam, rtol=1e-5)
        for e, m in zip(extras, [meta, meta2]):
            m = m.numpy()
            np.testing.assert_allclose(e.numpy(), lam * m + (1 - lam) * m[::-1], rtol=1e-5, atol=1e-6)


def test_cutmix_extras_use_corrected_lambda():
    n = 4
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K, label_smoothing=0.0)
    meta = paddle.to_tensor(np.arange(n * 2, dtype="float32").reshape(n, 2))
    for seed in range(5):
        out, targets, (e,) = mix(_const_batch(n), _labels(n), np.random.default_rng(seed), [meta])
        area = (out.numpy()[0] == n - 1).all(axis=0).mean()
        lam = 1 - area
        m = meta.numpy()
        np.testing.assert_allclose(e.numpy(), lam * m + (1 - lam) * m[::-1], rtol=1e-5, atol=1e-6)


def test_extras_validation_and_none():
    mix = Mixup(num_classes=K)
    _, _, extras = mix(_const_batch(4), _labels(4), np.random.default_rng(0))
    assert extras == []
    with pytest.raises(ValueError, match="batch size"):
        mix(_const_batch(4), _labels(4), np.random.default_rng(0), [paddle.zeros([3, 2])])
    with pytest.raises(ValueError, match="floating"):
        mix(_const_batch(4), _labels(4), np.random.default_rng(0), [paddle.zeros([4, 2], dtype="int64")])


# ---------------------------------------------------------------- modes, odd batches, reproducibility

@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("n", [5, 6])
def test_modes_shapes_sums_and_sources(mode, n):
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=K, mode=mode)
    labels = _labels(n)
    meta = paddle.to_tensor(np.arange(n, dtype="float32").reshape(n, 1))
    for seed in range(6):
        out, targets, (e,) = mix(_const_batch(n), labels, np.random.default_rng(seed), [meta])
        out = out.numpy()
        assert out.shape == (n, 2, 16, 32) and targets.shape == [n, K] and targets.dtype == paddle.float32
        np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-5)
        lam = _lam_from_targets(targets, labels.numpy(), 0.1)
        for i in range(n):
            j = n - 1 - i
            # every pixel is a blend of the sample and its flipped partner; the mean gives back lam
            assert out[i].min() >= min(i, j) - 1e-5 and out[i].max() <= max(i, j) + 1e-5
            if i != j:
                np.testing.assert_allclose(out[i].mean(), lam[i] * i + (1 - lam[i]) * j, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(e.numpy()[i, 0], lam[i] * i + (1 - lam[i]) * j, rtol=1e-5,
                                           atol=1e-5)
            else:  # odd batch: the middle sample pairs with itself and keeps its own label
                np.testing.assert_allclose(out[i], i, rtol=1e-6)
                np.testing.assert_allclose(targets.numpy()[i, labels.numpy()[i]], 1 - 0.1 + 0.1 / K, rtol=1e-5)
        if mode == "pair":
            np.testing.assert_allclose(lam, lam[::-1], rtol=1e-6)


def test_pair_cutmix_swaps_the_same_box():
    n = 4
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K, mode="pair")
    out, _, _ = mix(_const_batch(n), _labels(n), np.random.default_rng(3))
    out = out.numpy()
    for i in range(n // 2):
        j = n - 1 - i
        assert np.array_equal(out[i] == j, out[j] == i)


def test_same_seed_same_output_and_prob():
    n = 6
    x = paddle.to_tensor(np.random.RandomState(0).randn(n, 3, 8, 12).astype("float32"))
    meta = paddle.to_tensor(np.random.RandomState(1).randn(n, 4).astype("float32"))
    for mode in ["batch", "elem", "pair"]:
        mix = Mixup(num_classes=K, mode=mode)
        a = mix(x, _labels(n), np.random.default_rng(42), [meta])
        b = mix(x, _labels(n), np.random.default_rng(42), [meta])
        c = mix(x, _labels(n), np.random.default_rng(43), [meta])
        for u, v in [(a[0], b[0]), (a[1], b[1]), (a[2][0], b[2][0])]:
            assert np.array_equal(u.numpy(), v.numpy())
        assert not np.array_equal(a[1].numpy(), c[1].numpy())
    half = Mixup(num_classes=K, prob=0.5, label_smoothing=0.0)
    unmixed = 0
    for seed in range(40):
        out, t, _ = half(x, _labels(n), np.random.default_rng(seed))
        unmixed += np.array_equal(out.numpy(), x.numpy()) and t.numpy().max() == 1.0
    assert 5 < unmixed < 35


def test_disabled_mixup_passes_through_with_smoothed_targets():
    x = _const_batch(3)
    meta = paddle.ones([3, 2])
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    for mix in [Mixup(mixup_alpha=0, cutmix_alpha=0, num_classes=K), Mixup(prob=0.0, num_classes=K)]:
        out, t, (e,) = mix(x, _labels(3), rng, [meta])
        assert np.array_equal(out.numpy(), x.numpy()) and np.array_equal(e.numpy(), meta.numpy())
        np.testing.assert_allclose(t.numpy(), mixup_target(_labels(3), K, 1.0, 0.1).numpy())
    assert rng.bit_generator.state == state  # no randomness consumed
    mix = Mixup(num_classes=K)
    mix.mixup_enabled = False  # e.g. switched off by the train loop for the last epochs
    out, _, _ = mix(x, _labels(3), rng)
    assert np.array_equal(out.numpy(), x.numpy())


def test_others_smoothing_mode_spreads_eps_over_the_other_classes():
    t = mixup_target(paddle.to_tensor([1, 3], dtype="int64"), 5, lam=1.0, smoothing=0.1,
                     smoothing_mode="others").numpy()
    np.testing.assert_allclose(t[0], [0.025, 0.9, 0.025, 0.025, 0.025], rtol=1e-6)
    mix = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, num_classes=5, label_smoothing=0.1, smoothing_mode="others")
    _, targets, _ = mix(paddle.zeros([2, 3, 4, 4]), paddle.to_tensor([1, 3], dtype="int64"),
                        np.random.default_rng(0))
    lam = targets.numpy()[0, 1] - targets.numpy()[0, 0]  # on - off of the first sample's own class
    np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-6)
    assert targets.numpy()[0, 0] == pytest.approx(0.025)  # a class neither sample has keeps eps/(K-1)
    assert 0 < lam <= 0.875 + 1e-6
