"""What PIM tells the shared engine: config, model, PIM's data transforms, its loss terms and its heads."""
import dataclasses
import random

import numpy as np
import paddle
from PIL import Image, ImageEnhance

from common.config import ConfigError
from common.data.transforms import build_train_transform
from common.method import ClassificationMethod
from pim.config import get_config
from pim.model import build_from_config
from pim.pim_module import head_logits, pim_loss


# ----------------------------------------------------------------------------------------------------- transforms
def gaussian_kernel_1d(kernel, sigma):
    x = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2.0
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img, kernel, sigma):
    """Separable `kernel` x `kernel` Gaussian blur with reflected borders (as torchvision's GaussianBlur)."""
    arr = np.asarray(img, dtype=np.float32)
    k = gaussian_kernel_1d(kernel, sigma).astype(np.float32)
    r = kernel // 2
    padded = np.pad(arr, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(k[i] * padded[i:i + arr.shape[0]] for i in range(kernel))
    out = sum(k[i] * rows[:, i:i + arr.shape[1]] for i in range(kernel))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


class RandomGaussianBlur:
    def __init__(self, prob=0.1, kernel=5, sigma=(0.1, 5.0)):
        self.prob, self.kernel, self.sigma = prob, int(kernel), tuple(sigma)

    def __call__(self, img):
        if random.random() >= self.prob:
            return img
        return gaussian_blur(img, self.kernel, random.uniform(*self.sigma))


class RandomSharpness:
    def __init__(self, prob=0.1, factor=1.5):
        self.prob, self.factor = prob, factor

    def __call__(self, img):
        if random.random() >= self.prob:
            return img
        return ImageEnhance.Sharpness(img).enhance(self.factor)


def pim_train_transform(config):
    a = config.AUG
    extras = []
    if a.BLUR_PROB > 0:
        extras.append(RandomGaussianBlur(a.BLUR_PROB, a.BLUR_KERNEL, a.BLUR_SIGMA))
    if a.SHARPEN_PROB > 0:
        extras.append(RandomSharpness(a.SHARPEN_PROB, a.SHARPEN_FACTOR))
    return build_train_transform(config, extra_pil_steps=extras)


# --------------------------------------------------------------------------------------------------------- method
def resolve_main_head(wanted, heads):
    if wanted in ("", "auto"):
        for name in ("combiner", "sum", "original"):
            if name in heads:
                return name
    if wanted not in heads:
        raise ConfigError(f"MODEL.PIM.MAIN_HEAD '{wanted}' is not one of this model's heads: {', '.join(heads)}")
    return wanted


@dataclasses.dataclass(frozen=True)
class PIMSettings:
    """What `PIMMethod.build_model` decided from MODEL.PIM for one model, recorded on it (``model.pim_settings``):
    the loss and the heads read it from the model they are given, so every model keeps its own settings whatever
    else the method object has built."""
    layer_names: tuple
    lambdas: dict        # pim_loss keyword arguments: lambda_b, lambda_s, lambda_n, lambda_c
    highest: tuple       # k of every 'highest-k' head
    main_head: str


def pim_settings(model):
    settings = getattr(model, "pim_settings", None)
    if settings is None:
        raise TypeError(f"{type(model).__name__} carries no PIM settings: build it with PIMMethod.build_model")
    return settings


def settings_from_config(config, model):
    """`PIMSettings` of `model` built from `config`; raises ConfigError for values that do not fit the model."""
    p = config.MODEL.PIM
    highest = tuple(int(k) for k in p.HIGHEST_K) if not model.backbone_only else ()
    if any(k < 1 for k in highest):
        raise ConfigError(f"MODEL.PIM.HIGHEST_K values must be >= 1, got {list(p.HIGHEST_K)}")
    heads = model.head_names() + [f"highest-{k}" for k in highest]
    return PIMSettings(layer_names=tuple(model.layer_names),
                       lambdas=dict(lambda_b=p.LAMBDA_B, lambda_s=p.LAMBDA_S, lambda_n=p.LAMBDA_N,
                                    lambda_c=p.LAMBDA_C),
                       highest=highest, main_head=resolve_main_head(p.MAIN_HEAD, heads))


class PIMMethod(ClassificationMethod):
    name = "pim"

    def get_config(self):
        return get_config()

    def build_model(self, config):
        try:
            model = build_from_config(config)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"PIM model: {e.args[0] if e.args else e}") from None
        model.pim_settings = settings_from_config(config, model)
        return model

    def train_transform(self, config):
        return pim_train_transform(config)

    def main_head_of(self, model):
        return pim_settings(model).main_head

    def head_names(self, model):
        """Every head `eval_heads` returns for this model (e.g. to check a -head flag before predicting)."""
        return model.head_names() + [f"highest-{k}" for k in pim_settings(model).highest]

    def loss(self, criterion, outputs, targets, model):
        s = pim_settings(model)
        return pim_loss(outputs, targets, list(s.layer_names), criterion=criterion, **s.lambdas)

    def eval_heads(self, model, outputs):
        s = pim_settings(model)
        return head_logits(outputs, list(s.layer_names), list(s.highest))

    def unreached_parameters(self, config, model):
        """Names of the trainable parameters this configuration's loss never reaches (e.g. the combiner under
        LAMBDA_C 0, a level's head when none of LAMBDA_B / LAMBDA_S / LAMBDA_N reaches it, and without the FPN the
        backbone stages above the deepest level that is used), found by one backward pass of the loss on a blank
        image: in eval mode, so no BatchNorm statistic or random number is touched, and the gradients are cleared."""
        was_training = model.training
        model.eval()
        try:
            size, channels = config.DATA.IMAGE_SIZE, config.DATA.IMAGE_CHANNELS
            outputs = model(paddle.zeros([1, channels, size, size]))
            try:
                loss, _ = self.loss(None, outputs, paddle.zeros([1], dtype="int64"), model)
            except ValueError as e:       # every loss term switched off
                raise ConfigError(f"MODEL.PIM.LAMBDA_*: {e}") from None
            loss.backward()
            unreached = [n for n, q in model.named_parameters() if not q.stop_gradient and q.grad is None]
        finally:
            model.clear_gradients(set_to_zero=False)
            if was_training:
                model.train()
        return unreached

    def prepare_training(self, config, model, log):
        """Freeze (stop_gradient) the parameters the loss never reaches. They would not change anyway (no gradient),
        but with several processes Paddle's DataParallel waits for their gradients and stops at the next step. Its
        find_unused_parameters=True does not help here: the reducer still waits for every parameter that an output
        of the model depends on, and these feed outputs the loss leaves out (``comb_outs``, the heads' logits).
        Frozen, they leave the optimizer; the checkpoints still hold them."""
        names = set(self.unreached_parameters(config, model))
        if not names:
            return
        for n, q in model.named_parameters():
            if n in names:
                q.stop_gradient = True
        parts = sorted({n.split(".")[0] if not n.startswith(("fpn.", "selector.", "backbone.")) else
                        ".".join(n.split(".")[:2]) for n in names})
        log(f"PIM: the loss weights (MODEL.PIM.LAMBDA_*) leave {len(names)} parameters without a gradient "
            f"({', '.join(parts)}); they are frozen")
