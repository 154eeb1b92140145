"""Train / eval transforms of the transfer recipes: the common pipelines with the method's normalisation statistics,
and optionally the fine-grained baseline's zero-padded random crop (its square resize is the common
DATA.SQUARE_RESIZE)."""
import random

from PIL import Image

from common.data.transforms import RandomCrop, build_eval_transform, build_train_transform
from transfer.config import with_norm_stats


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
        if cfg.TRANSFER.CROP_PADDING > 0:
            _replace(t.steps, 1, RandomCrop, PaddedRandomCrop(cfg.DATA.IMAGE_SIZE, cfg.TRANSFER.CROP_PADDING))
    return t


def eval_transform(config):
    cfg = with_norm_stats(config)
    return build_eval_transform(cfg)
