"""The fine-tuning view of a backbone: its body as an ordered list of blocks plus the classifier, so that "layer"
means the same thing for Inception v4 and ResNet.

* Inception v4: 22 body blocks `features.0` ... `features.21` (as in the reference code), classifier `last_linear`.
* ResNet (18 ... 152): `stem` (conv1 + bn1), then every residual block `layer1.0` ... `layer4.2`
  (17 body blocks for ResNet-50), classifier `fc`.

`new_layers = N` re-initialises the classifier and the top N-1 body blocks (N = 1: the classifier only; the largest
N re-initialises the whole network). Parameters are assigned to blocks by module membership (the sublayer that
owns them), never by parsing indices out of names.
"""
from dataclasses import dataclass

import paddle.nn as nn

from common import init
from common.backbones.resnet import RESNET_DEPTHS, ResNet, create_resnet, reset_like_torchvision
from common.config import ConfigError
from common.models import register_model
from common.backbones.inception_v4 import InceptionV4, inception_v4

MODEL_NAMES = ("inception_v4",) + tuple(RESNET_DEPTHS)
LR_GROUPS = ("head", "high", "low")   # order of TRANSFER.LRS
for _name in MODEL_NAMES:
    register_model(_name, "transfer", image_size=299 if _name == "inception_v4" else 224, crop_pct=0.875,
                   interpolation="bicubic", num_classes=1000, description=f"{_name} for fine-tuning")


def create_model(name, num_classes=1000, in_channels=3, drop_rate=0.0):
    if name == "inception_v4":
        return inception_v4(num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)
    if name in RESNET_DEPTHS:
        return create_resnet(name, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)
    raise ConfigError(f"MODEL.NAME '{name}' is not a transfer model; known: {', '.join(MODEL_NAMES)}")


@dataclass
class Block:
    name: str
    paths: list        # sublayer paths owned by the block (also the prefixes of its parameter names)
    index: int         # position in the body, input side 0; -1 for the classifier

    @property
    def is_classifier(self):
        return self.index < 0


def body_blocks(model):
    return [Block(name, list(paths), i) for i, (name, paths) in enumerate(model.ordered_blocks())]


def classifier_block(model):
    paths = sorted({k.rsplit(".", 1)[0] for k in model.classifier_keys()})
    return Block(paths[0] if len(paths) == 1 else "+".join(paths), paths, -1)


def max_new_layers(model):
    return len(model.ordered_blocks()) + 1


def model_label(model):
    return type(model).__name__


def new_layer_blocks(model, n):
    """The blocks that `new_layers = n` re-initialises: the classifier, then the top n-1 body blocks (top first)."""
    body = body_blocks(model)
    top = len(body) + 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= top:
        raise ConfigError(
            f"TRANSFER.NEW_LAYERS {n} is out of range for {model_label(model)}: 1 (classifier only) to {top} "
            f"(classifier + all {len(body)} body blocks: {body[0].name} ... {body[-1].name})")
    return [classifier_block(model)] + body[::-1][:n - 1]


def _sublayers(model):
    return dict(model.named_sublayers())



def reinit_block(model, block):
    """Give `block` the initial values of a newly constructed module, as the reference does: PyTorch defaults
    for Inception v4 (and for every classifier, a torch nn.Linear), torchvision's init for ResNet blocks."""
    layers = _sublayers(model)
    for path in block.paths:
        layer = layers[path]
        if block.is_classifier or isinstance(model, InceptionV4):
            init.reset_like_torch(layer)
        elif isinstance(model, ResNet):
            reset_like_torchvision(layer)
        else:
            raise TypeError(f"no re-initialisation rule for {type(model).__name__}")


def reinit_new_layers(model, n):
    """Re-initialise the classifier and the top n-1 body blocks; returns their names (classifier first)."""
    blocks = new_layer_blocks(model, n)
    for b in blocks:
        reinit_block(model, b)
    return [b.name for b in blocks]


def parameter_blocks(model, trainable_only=True):
    """{parameter name: Block} for every (trainable) parameter; fails if one belongs to no block or to two."""
    blocks = [classifier_block(model)] + body_blocks(model)
    out = {}
    for name, p in model.named_parameters():
        if trainable_only and p.stop_gradient:
            continue
        owners = [b for b in blocks if any(name.startswith(path + ".") for path in b.paths)]
        if len(owners) != 1:
            raise RuntimeError(f"parameter '{name}' belongs to {len(owners)} blocks of {model_label(model)}")
        out[name] = owners[0]
    return out


def norm_parameter_names(model):
    """Names of BatchNorm scale/shift parameters (and statistics)."""
    names = set()
    for path, layer in model.named_sublayers():
        if isinstance(layer, (nn.BatchNorm2D, nn.BatchNorm, nn.SyncBatchNorm)):
            names.update(f"{path}.{n}" for n, _ in layer.named_parameters(include_sublayers=False))
    return names


def check_num_lowlrs(model, num_lowlrs):
    nbody = len(model.ordered_blocks())
    if not isinstance(num_lowlrs, int) or not 0 <= num_lowlrs <= nbody:
        raise ConfigError(f"TRANSFER.NUM_LOWLRS {num_lowlrs} is out of range for {model_label(model)}: 0 to {nbody} "
                          f"(the number of bottom body blocks trained at the low learning rate), or -1 for one rate")


def lr_groups(model, num_lowlrs):
    """{trainable parameter name: 'head' | 'high' | 'low'}: the classifier, the body blocks from index
    `num_lowlrs` up, and the `num_lowlrs` bottom body blocks (what the reference code does)."""
    check_num_lowlrs(model, num_lowlrs)
    out = {}
    for name, block in parameter_blocks(model).items():
        if block.is_classifier:
            out[name] = "head"
        else:
            out[name] = "low" if block.index < num_lowlrs else "high"
    return out
