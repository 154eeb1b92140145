"""Train / eval transforms of the transfer recipes: the common pipelines with the method's normalisation statistics,
and optionally the fine-grained baseline's square resize (aspect not kept) and zero-padded random crop."""
import random

from PIL import Image

from common.data.transforms import (CenterCrop, RandomCrop, ResizeShortSide, build_eval_transform,
                                    build_train_transform, eval_resize_size, pil_interpolation)
from transfer.config import with_norm_stats


class ResizeSquare:
    """Resize to size x size whatever the aspect ratio (torchvision `Resize((size, size))`)."""

    def __init__(self, size, interpolation="bilinear"):
        self.size = size
        self.interpolation = pil_interpolation(interpolation)

    def __call__(self, img):
        return img.resize((self.size, self.size), self.interpolation)


class PaddedRandomCrop:
    """Pad every side with `padding` black pixels, then crop size x size at a random place
    (torchvision `RandomCrop(size, padding=padding)`)."""

    def __init__(self, size, padding=0):
        self.size = size
        self.padding = padding

    def __call__(self, img):
        if self.padding > 0:
            w, h = img.size
            canvas = Image.new(img.mode, (w + 2 * self.padding, h + 2 * self.padding), 0)
            canvas.paste(img, (self.padding, self.padding))
            img = canvas
        w, h = img.size
        left = random.randint(0, max(0, w - self.size))
        top = random.randint(0, max(0, h - self.size))
        return img.crop((left, top, left + self.size, top + self.size))


def _replace(steps, index, kind, new):
    if not isinstance(steps[index], kind):
        raise RuntimeError(f"unexpected common transform layout: step {index} is {type(steps[index]).__name__}, "
                           f"expected {kind.__name__}")
    steps[index] = new


def train_transform(config):
    cfg = with_norm_stats(config)
    t = build_train_transform(cfg)
    if cfg.AUG.TRAIN_RESIZE > 0:
        if cfg.TRANSFER.SQUARE_RESIZE:
            _replace(t.steps, 0, ResizeShortSide, ResizeSquare(cfg.AUG.TRAIN_RESIZE, cfg.DATA.INTERPOLATION))
        if cfg.TRANSFER.CROP_PADDING > 0:
            _replace(t.steps, 1, RandomCrop, PaddedRandomCrop(cfg.DATA.IMAGE_SIZE, cfg.TRANSFER.CROP_PADDING))
    return t


def eval_transform(config):
    cfg = with_norm_stats(config)
    t = build_eval_transform(cfg)
    if cfg.TRANSFER.SQUARE_RESIZE:
        _replace(t.steps, 0, ResizeShortSide, ResizeSquare(eval_resize_size(cfg), cfg.DATA.INTERPOLATION))
        _replace(t.steps, 1, CenterCrop, CenterCrop(cfg.DATA.IMAGE_SIZE))
    return t
