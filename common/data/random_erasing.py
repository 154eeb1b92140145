"""Random erasing (Zhong et al., arXiv 1708.04896) on normalised float CHW arrays, after ToNormalizedArray.

Behaves like timm's RandomErasing: with probability `probability` an image gets between `min_count` and `max_count`
boxes; each box covers a fraction in [min_area, max_area] of the image (divided by the box count) with a
log-uniform aspect ratio in [min_aspect, max_aspect], and is filled with

    'pixel'  independent standard-normal values per pixel and channel,
    'rand'   one standard-normal value per channel,
    'const'  zeros (the data-set mean after normalisation).

A box is placed only if it fits strictly inside the image; up to 10 draws are tried per box, then it is skipped.
All randomness comes from numpy's global generator (reseeded per sample by the data set).
"""
import math

import numpy as np

__all__ = ["RandomErasing"]

_MODES = ("pixel", "rand", "const")


class RandomErasing:
    def __init__(self, probability=0.5, mode="pixel", min_area=0.02, max_area=1 / 3, min_aspect=0.3,
                 max_aspect=None, min_count=1, max_count=None, num_splits=0):
        mode = (mode or "const").lower()
        if mode not in _MODES:
            raise ValueError(f"unknown random-erasing mode '{mode}'; use one of {', '.join(_MODES)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"random-erasing probability must be in [0, 1], got {probability}")
        if not 0.0 < min_area <= max_area <= 1.0:
            raise ValueError(f"random erasing needs 0 < min_area <= max_area <= 1, got {min_area}, {max_area}")
        max_aspect = max_aspect or 1.0 / min_aspect
        if not 0.0 < min_aspect <= max_aspect:
            raise ValueError(f"random erasing needs 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        max_count = max_count or min_count
        if not 1 <= min_count <= max_count:
            raise ValueError(f"random erasing needs 1 <= min_count <= max_count, got {min_count}, {max_count}")
        self.probability = float(probability)
        self.mode = mode
        self.min_area = float(min_area)
        self.max_area = float(max_area)
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.min_count = int(min_count)
        self.max_count = int(max_count)
        self.num_splits = int(num_splits)

    def _fill(self, chans, h, w, dtype):
        if self.mode == "pixel":
            return np.random.standard_normal((chans, h, w)).astype(dtype)
        if self.mode == "rand":
            return np.random.standard_normal((chans, 1, 1)).astype(dtype)
        return np.zeros((chans, 1, 1), dtype=dtype)

    def erase(self, img):
        """Erase boxes in one CHW array, in place; returns the list of (top, left, h, w) boxes written."""
        boxes = []
        if np.random.random_sample() >= self.probability:
            return boxes
        chans, img_h, img_w = img.shape
        area = img_h * img_w
        count = self.min_count if self.min_count == self.max_count else \
            int(np.random.randint(self.min_count, self.max_count + 1))
        for _ in range(count):
            for _attempt in range(10):
                target = np.random.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(np.random.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if 0 < h < img_h and 0 < w < img_w:
                    top = int(np.random.randint(0, img_h - h + 1))
                    left = int(np.random.randint(0, img_w - w + 1))
                    img[:, top:top + h, left:left + w] = self._fill(chans, h, w, img.dtype)
                    boxes.append((top, left, h, w))
                    break
        return boxes

    def __call__(self, x):
        """x: float CHW array (one image) or NCHW (a batch, per sample); modified in place and returned."""
        if not isinstance(x, np.ndarray) or x.ndim not in (3, 4):
            raise ValueError(f"RandomErasing expects a CHW or NCHW numpy array, got "
                             f"{type(x).__name__} with shape {getattr(x, 'shape', None)}")
        if x.ndim == 3:
            self.erase(x)
            return x
        # with num_splits > 1 the first split is the clean copy (augmentation-split training): leave it alone
        start = x.shape[0] // self.num_splits if self.num_splits > 1 else 0
        for i in range(start, x.shape[0]):
            self.erase(x[i])
        return x

    def __repr__(self):
        return (f"RandomErasing(p={self.probability}, mode={self.mode}, area=({self.min_area:.3g}, "
                f"{self.max_area:.3g}), count=({self.min_count}, {self.max_count}))")
