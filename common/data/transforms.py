"""Train and eval transforms: PIL image in, normalised CHW float32 numpy array out."""
import math
import random

import numpy as np
from PIL import Image
from paddle.vision import transforms as T

_PIL_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
               "lanczos": Image.LANCZOS}


def pil_interpolation(name):
    try:
        return _PIL_INTERP[name]
    except KeyError:
        raise ValueError(f"unknown interpolation '{name}'; use one of {', '.join(_PIL_INTERP)}") from None


class ToNormalizedArray:
    """uint8 HWC PIL image -> (x/255 - mean) / std as CHW float32."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype="float32").reshape(3, 1, 1)
        self.std = np.asarray(std, dtype="float32").reshape(3, 1, 1)

    def __call__(self, img):
        arr = np.asarray(img, dtype="float32").transpose(2, 0, 1) / 255.0
        return (arr - self.mean) / self.std


class SquareResize:
    """Resize to size x size whatever the aspect ratio (torchvision `Resize((size, size))`)."""

    def __init__(self, size, interpolation="bilinear"):
        self.size = size
        self.interpolation = pil_interpolation(interpolation)

    def output_size(self, w, h):
        return self.size, self.size

    def __call__(self, img):
        return img.resize(self.output_size(*img.size), self.interpolation)


def resize_step(config, size):
    """The resize before a crop: the short side to `size`, or a size x size square with DATA.SQUARE_RESIZE."""
    kind = SquareResize if config.DATA.SQUARE_RESIZE else ResizeShortSide
    return kind(size, config.DATA.INTERPOLATION)


class RandomResizedCrop:
    """Inception-style crop: area fraction in `scale`, log-uniform aspect ratio in `ratio`, then resize."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bicubic"):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.interpolation = pil_interpolation(interpolation)

    def get_params(self, width, height):
        area = width * height
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        # fall back to a center crop with the aspect ratio clamped into range
        in_ratio = width / height
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if in_ratio < lo:
            w, h = width, int(round(width / lo))
        elif in_ratio > hi:
            h, w = height, int(round(height * hi))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img):
        top, left, h, w = self.get_params(*img.size)
        return img.resize((self.size[1], self.size[0]), self.interpolation, box=(left, top, left + w, top + h))


class RandomHorizontalFlip:
    def __init__(self, prob=0.5):
        self.prob = prob

    def __call__(self, img):
        return img.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.prob else img


class ResizeShortSide:
    def __init__(self, size, interpolation="bicubic"):
        self.size = size
        self.interpolation = pil_interpolation(interpolation)

    def output_size(self, w, h):
        if w <= h:
            return self.size, max(1, int(round(h * self.size / w)))
        return max(1, int(round(w * self.size / h))), self.size

    def __call__(self, img):
        return img.resize(self.output_size(*img.size), self.interpolation)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def box(self, w, h):
        left = int(round((w - self.size) / 2.0))
        top = int(round((h - self.size) / 2.0))
        return left, top, left + self.size, top + self.size

    def __call__(self, img):
        return img.crop(self.box(*img.size))


class RandomCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        w, h = img.size
        left = random.randint(0, max(0, w - self.size))
        top = random.randint(0, max(0, h - self.size))
        return img.crop((left, top, left + self.size, top + self.size))


class Compose:
    def __init__(self, steps):
        self.steps = [s for s in steps if s is not None]

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self):
        return "Compose(" + ", ".join(type(s).__name__ for s in self.steps) + ")"


def eval_resize_size(config):
    if config.DATA.RESIZE_SIZE > 0:
        return config.DATA.RESIZE_SIZE
    return int(math.floor(config.DATA.IMAGE_SIZE / config.DATA.CROP_PCT))


def build_eval_transform(config):
    """Resize the short side (or the whole image, DATA.SQUARE_RESIZE) to IMAGE_SIZE / CROP_PCT (or RESIZE_SIZE),
    center crop IMAGE_SIZE, normalise."""
    return Compose([
        resize_step(config, eval_resize_size(config)),
        CenterCrop(config.DATA.IMAGE_SIZE),
        ToNormalizedArray(config.DATA.MEAN, config.DATA.STD),
    ])


def build_train_transform(config, extra_pil_steps=()):
    """Crop (random-resized, or resize + random crop), flip, colour policy, normalise, random erasing.

    `extra_pil_steps` lets a method add PIL-level augmentations (e.g. blur / sharpen) before normalisation.
    """
    aug, size = config.AUG, config.DATA.IMAGE_SIZE
    if aug.TRAIN_RESIZE > 0:
        crop = [resize_step(config, aug.TRAIN_RESIZE), RandomCrop(size)]
    else:
        crop = [RandomResizedCrop(size, tuple(aug.SCALE), tuple(aug.RATIO), config.DATA.INTERPOLATION)]
    policy = None
    mean_pixel = tuple(int(round(255 * m)) for m in config.DATA.MEAN)
    if aug.RAND_AUGMENT or aug.AUTO_AUGMENT:
        from common.data.auto_augment import build_policy
    if aug.RAND_AUGMENT:
        policy = build_policy(aug.RAND_AUGMENT, size, mean_pixel, interpolation=config.DATA.INTERPOLATION)
    elif aug.AUTO_AUGMENT:
        policy = build_policy(aug.AUTO_AUGMENT, size, mean_pixel, interpolation=config.DATA.INTERPOLATION)
    elif aug.COLOR_JITTER > 0:
        cj = aug.COLOR_JITTER
        policy = T.ColorJitter(brightness=cj, contrast=cj, saturation=cj)
    erasing = None
    if aug.RE_PROB > 0:
        from common.data.random_erasing import RandomErasing
        erasing = RandomErasing(probability=aug.RE_PROB, mode=aug.RE_MODE, max_count=aug.RE_COUNT)
    return Compose(crop + [
        RandomHorizontalFlip(aug.HFLIP) if aug.HFLIP > 0 else None,
        policy,
        *extra_pil_steps,
        ToNormalizedArray(config.DATA.MEAN, config.DATA.STD),
        erasing,
    ])


def view_box(steps, size):
    """Where the model's view lies in the original image: (left, top, right, bottom) in original pixels after the
    resize and crop `steps` (ResizeShortSide / SquareResize / CenterCrop) of an image of `size` (w, h); None when a
    step is of another kind."""
    w, h = size
    scale_x = scale_y = 1.0            # original pixels per current pixel
    left = top = 0.0
    for step in steps:
        if hasattr(step, "output_size"):
            new_w, new_h = step.output_size(w, h)
            scale_x, scale_y = scale_x * w / new_w, scale_y * h / new_h
            w, h = new_w, new_h
        elif hasattr(step, "box"):
            x0, y0, x1, y1 = step.box(w, h)
            left, top = left + x0 * scale_x, top + y0 * scale_y
            w, h = x1 - x0, y1 - y0
        else:
            return None
    return left, top, left + w * scale_x, top + h * scale_y
