"""Mixup / CutMix on a batch of paddle tensors, with label smoothing folded into the soft targets.

Differences from PaddleViT's mixup.py (see shared/references/resmlp_ppvit.md, section 4):
  * `num_classes` is required (B3: PaddleViT silently used 1000);
  * the CutMix box spans rows on axis 2 (H) and columns on axis 3 (W), so non-square inputs are correct (B5);
  * one-hot targets are built in one vectorised op, not a Python loop per sample (B14);
  * all randomness comes from a `numpy.random.Generator` passed per call, so a run is reproducible and resumable;
  * odd batch sizes work (the flip pairs the middle sample with itself, which leaves it unmixed).

Partners: sample i is mixed with sample N-1-i (the batch flipped) in every mode.
  'batch'  one lambda and one mixup/cutmix choice (and one box) for the whole batch;
  'pair'   one draw per pair (i, N-1-i), the same for both members;
  'elem'   one draw per sample.

Extras (e.g. metadata vectors [N, ...]) are mixed like the images, with the same partner and lambda:
x_i * lam_i + x_partner * (1 - lam_i). Under CutMix there is no spatial box for a vector, so extras are blended with
the lambda that also weights the targets: the area-corrected one (1 - pasted area / image area) when correct_lam is
on or cutmix_minmax is set.

Targets: off = smoothing / num_classes, on = 1 - smoothing + off, then y_i * lam_i + y_partner * (1 - lam_i).
"""
import numpy as np
import paddle

from common.data.targets import one_hot, smoothed_targets

__all__ = ["Mixup", "mixup_target", "cutmix_bbox", "one_hot"]

_MODES = ("batch", "pair", "elem")


def mixup_target(target, num_classes, lam=1.0, smoothing=0.0, smoothing_mode="uniform"):
    """Smoothed one-hot targets mixed with the flipped batch: y * lam + y.flip(0) * (1 - lam).

    lam: a float, or one value per sample ([N] array / tensor) for the per-pair / per-element modes.
    smoothing_mode: 'uniform' (s/K off-target, timm) or 'others' (s/(K-1) off-target), see
    `common.data.targets.smoothed_targets`.
    """
    y = smoothed_targets(target, num_classes, smoothing, smoothing_mode)
    lam = _lam_column(lam, y.shape[0], y.dtype)
    return y * lam + paddle.flip(y, axis=[0]) * (1.0 - lam)


def _lam_column(lam, n, dtype, ndim=2):
    """A scalar stays a float; per-sample values become an [N, 1, ...] tensor broadcasting over `ndim` dims."""
    if isinstance(lam, paddle.Tensor):
        lam = lam.numpy()
    if np.ndim(lam) == 0:
        return float(lam)
    lam = np.asarray(lam, dtype="float32").reshape([n] + [1] * (ndim - 1))
    return paddle.to_tensor(lam).astype(dtype)


def cutmix_bbox(img_shape, lam, rng, ratio_minmax=None):
    """A CutMix box for images of shape [..., H, W] and the lambda it implies.

    Without `ratio_minmax`: a box of (H * sqrt(1 - lam)) x (W * sqrt(1 - lam)) centred on a uniform pixel and clipped
    to the image. With it: side lengths uniform in [min, max] x the image side, placed fully inside the image.
    Returns ((y0, y1, x0, x1), lam_box) with rows y0:y1 on the H axis, columns x0:x1 on the W axis and
    lam_box = 1 - box area / image area (the fraction of the image that stays).
    """
    img_h, img_w = int(img_shape[-2]), int(img_shape[-1])
    if ratio_minmax is None:
        ratio = float(np.sqrt(max(0.0, 1.0 - float(lam))))
        cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
        cy = int(rng.integers(0, img_h))
        cx = int(rng.integers(0, img_w))
        y0, y1 = np.clip([cy - cut_h // 2, cy + (cut_h + 1) // 2], 0, img_h)
        x0, x1 = np.clip([cx - cut_w // 2, cx + (cut_w + 1) // 2], 0, img_w)
    else:
        lo, hi = ratio_minmax
        cut_h = int(rng.integers(int(img_h * lo), max(int(img_h * hi), int(img_h * lo) + 1)))
        cut_w = int(rng.integers(int(img_w * lo), max(int(img_w * hi), int(img_w * lo) + 1)))
        cut_h, cut_w = min(cut_h, img_h), min(cut_w, img_w)
        y0 = int(rng.integers(0, img_h - cut_h + 1))
        x0 = int(rng.integers(0, img_w - cut_w + 1))
        y1, x1 = y0 + cut_h, x0 + cut_w
    box = (int(y0), int(y1), int(x0), int(x1))
    lam_box = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / float(img_h * img_w)
    return box, lam_box


class Mixup:
    """Batch Mixup / CutMix; see the module doc for modes, pairing and how extras are mixed.

    mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; 0 turns that kind off.
    cutmix_minmax: (min, max) box side ratios; when set, CutMix uses them instead of a lambda-sized box and
        cutmix_alpha is forced to 1.0 (as in timm).
    prob: probability that a batch (or pair / element) is mixed at all.
    switch_prob: probability of CutMix rather than Mixup when both are on.
    correct_lam: recompute lambda from the clipped box area (always done with cutmix_minmax).
    label_smoothing: folded into the targets (uniform mode: off = s / K, on = 1 - s + off; 'others' mode:
        off = s / (K - 1), on = 1 - s).
    num_classes: the real class count; required.
    """

    def __init__(self, mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode="batch", correct_lam=True, label_smoothing=0.1, num_classes=None, smoothing_mode="uniform"):
        if num_classes is None or int(num_classes) <= 0:
            raise ValueError(f"Mixup needs num_classes, the real number of classes (> 0); got {num_classes!r}")
        if mode not in _MODES:
            raise ValueError(f"unknown mixup mode '{mode}'; use one of {', '.join(_MODES)}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"mixup prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if cutmix_minmax is not None:
            cutmix_minmax = tuple(float(v) for v in cutmix_minmax)
            if len(cutmix_minmax) != 2 or not 0.0 < cutmix_minmax[0] <= cutmix_minmax[1] <= 1.0:
                raise ValueError(f"cutmix_minmax must be (min, max) with 0 < min <= max <= 1, got {cutmix_minmax}")
            cutmix_alpha = 1.0
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutmix_minmax = cutmix_minmax
        self.mix_prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.mode = mode
        self.correct_lam = bool(correct_lam)
        self.label_smoothing = float(label_smoothing)
        self.smoothing_mode = smoothing_mode
        self.num_classes = int(num_classes)
        # the train loop may switch this off (e.g. for the last epochs); then only the smoothed targets are made
        self.mixup_enabled = self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    # ----- parameter draws
    def _draw(self, rng, n):
        """Per-draw lambdas [n] (1.0 = not mixed) and CutMix flags [n]."""
        both = self.mixup_alpha > 0 and self.cutmix_alpha > 0
        if both:
            use_cutmix = rng.random(n) < self.switch_prob
        else:
            use_cutmix = np.full(n, self.cutmix_alpha > 0)
        lam = np.ones(n, dtype="float64")
        if self.cutmix_alpha > 0:
            lam = np.where(use_cutmix, rng.beta(self.cutmix_alpha, self.cutmix_alpha, n), lam)
        if self.mixup_alpha > 0:
            lam = np.where(use_cutmix, lam, rng.beta(self.mixup_alpha, self.mixup_alpha, n))
        apply = rng.random(n) < self.mix_prob
        lam = np.where(apply, lam, 1.0)
        return lam, use_cutmix & apply

    def _box(self, shape, lam, rng):
        box, lam_box = cutmix_bbox(shape, lam, rng, self.cutmix_minmax)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = lam_box
        return box, lam

    # ----- mixing
    def _mix_batch(self, x, rng):
        if rng.random() >= self.mix_prob:
            return x, 1.0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        flipped = paddle.flip(x, axis=[0])
        if not use_cutmix:
            return x * lam + flipped * (1.0 - lam), lam
        (y0, y1, x0, x1), lam = self._box(x.shape, lam, rng)
        out = x.clone()
        if y1 > y0 and x1 > x0:
            out[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        return out, lam

    def _mix_per_sample(self, x, rng):
        n, _, img_h, img_w = x.shape
        if self.mode == "pair":
            k = (n + 1) // 2  # the middle sample of an odd batch is its own partner, so its draw changes nothing
            lam_half, cut_half = self._draw(rng, k)
            lam = np.concatenate([lam_half, lam_half[: n - k][::-1]])
            use_cutmix = np.concatenate([cut_half, cut_half[: n - k][::-1]])
        else:
            k = n
            lam, use_cutmix = self._draw(rng, n)
        # weight of the partner per pixel: (1 - lam) for mixup, the box mask for cutmix
        weight = np.broadcast_to((1.0 - lam).reshape(n, 1, 1, 1), (n, 1, img_h, img_w)).astype("float32")
        for i in range(k):
            if use_cutmix[i] and lam[i] < 1.0:
                (y0, y1, x0, x1), lam[i] = self._box(x.shape, lam[i], rng)
                weight[i] = 0.0
                weight[i, :, y0:y1, x0:x1] = 1.0
                j = n - 1 - i
                if j != i and self.mode == "pair":
                    weight[j] = weight[i]
                    lam[j] = lam[i]
        w = paddle.to_tensor(weight).astype(x.dtype)
        flipped = paddle.flip(x, axis=[0])
        return x * (1.0 - w) + flipped * w, lam

    def __call__(self, x, target, rng, extras=None):
        """Mix images x [N, C, H, W] and int64 targets [N]; returns (x, soft targets [N, K] float32, extras).

        rng: numpy.random.Generator, the only source of randomness. extras: optional list of float tensors [N, ...]
        mixed with the same partners and lambdas (see module doc); the returned list is empty when extras is None.
        """
        if len(x.shape) != 4:
            raise ValueError(f"Mixup expects images shaped [N, C, H, W], got {list(x.shape)}")
        n = int(x.shape[0])
        if int(np.prod(target.shape)) != n:
            raise ValueError(f"Mixup got {n} images but targets of shape {list(target.shape)}")
        extras = list(extras) if extras is not None else []
        for e in extras:
            if int(e.shape[0]) != n:
                raise ValueError(f"Mixup extras must have the batch size {n} first, got shape {list(e.shape)}")
            if not paddle.is_floating_point(e):
                raise ValueError(f"Mixup extras must be floating point to be mixed, got {e.dtype}")
        if not self.mixup_enabled:
            lam = 1.0
        elif self.mode == "batch":
            x, lam = self._mix_batch(x, rng)
        else:
            x, lam = self._mix_per_sample(x, rng)
        targets = mixup_target(target, self.num_classes, lam, self.label_smoothing, self.smoothing_mode)
        mixed_extras = []
        for e in extras:
            if np.ndim(lam) == 0 and lam == 1.0:
                mixed_extras.append(e)
                continue
            col = _lam_column(lam, n, e.dtype, ndim=len(e.shape))
            mixed_extras.append(e * col + paddle.flip(e, axis=[0]) * (1.0 - col))
        return x, targets, mixed_extras

    def __repr__(self):
        return (f"Mixup(mode={self.mode}, mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"minmax={self.cutmix_minmax}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
                f"smoothing={self.label_smoothing}, num_classes={self.num_classes})")
