"""Transfer: PyTorch -> Paddle weight mapping, discovered by ``python -m common.port``.

``inception_v4``
    timm checkpoints: ``inception_v4.tf_in1k`` (1000 classes) and the older Cadene / timm <= 0.4 file
    ``inceptionv4-8e4777a0.pth`` that the non-binary transfer reference starts from (1001 classes, a background
    logit first). Names are identical to ours apart from BatchNorm statistics; ``last_linear.weight`` is
    transposed. A 1001-row classifier ported into a 1000-class model loses its background row (timm's
    ``label_offset``).
``resnet50``
    torchvision (``IMAGENET1K_V1`` / ``V2``) and timm (``resnet50.a1_in1k`` ...) checkpoints, which share their key
    names; the rules are ``common.backbones.resnet.torchvision_resnet_rules``.

For fine-tuning the classifier is replaced anyway: port with the source's class count, then train with
``-pretrained out.pdparams -opts MODEL.PRETRAINED_NEW_HEAD True``, or port with ``--num-classes N
--allow-missing last_linear`` (``fc`` for ResNet).
"""
import re

import numpy as np

from common.backbones.resnet import create_resnet, torchvision_resnet_rules
from common.porting import PortSpec, ReferenceModel, SourceFlavour, Transpose, batchnorm_rules
from common.backbones.inception_v4 import inception_v4


class DropBackgroundClass:
    """A 1001-class classifier (background logit first) ported into a 1000-class model: drop row / entry 0."""
    stage = "value"

    def __init__(self, pattern=r"last_linear\.(weight|bias)"):
        self.pattern = pattern
        self._rx = re.compile(pattern)

    def applies(self, key, value):
        return self._rx.fullmatch(key) is not None and value.shape[0] == 1001

    def apply(self, value, target_shape):
        if target_shape is None or 1000 not in (target_shape[0], target_shape[-1]):
            return value   # e.g. a 1001-class model: keep every row; other sizes are left to the shape check
        return np.ascontiguousarray(value[1:])

    def __repr__(self):
        return f"DropBackgroundClass({self.pattern!r})"


INCEPTION_RULES = batchnorm_rules() + [DropBackgroundClass(), Transpose(r"last_linear\.weight", ndim=2)]
RESNET_RULES = torchvision_resnet_rules()


def paddle_key_to_torch(key, value):
    """One Paddle tensor -> the torch key and layout (inverse of the rules; classifier weight transposed back)."""
    key = re.sub(r"\._mean$", ".running_mean", key)
    key = re.sub(r"\._variance$", ".running_var", key)
    if key in ("last_linear.weight", "fc.weight") and value.ndim == 2:
        value = value.T.copy()
    return key, value


def _identity(state, model):
    return state


def _timm_inception(num_classes=None):
    import timm
    return timm.create_model("inception_v4", pretrained=False, num_classes=1000 if num_classes is None else num_classes)


def _inception_to_reference(state, model):
    """A 1001-class source fed to a 1000-class timm model: drop the background row, as the port does."""
    out = dict(state)
    want = model.last_linear.weight.shape[0]
    for k in ("last_linear.weight", "last_linear.bias"):
        if k in out and out[k].shape[0] == 1001 and want == 1000:
            out[k] = out[k][1:]
    return out


def _torchvision_resnet50(num_classes=None):
    import torchvision
    return torchvision.models.resnet50(weights=None, num_classes=1000 if num_classes is None else num_classes)


PORT_SPECS = {
    "inception_v4": PortSpec(
        name="inception_v4",
        build_model=lambda **kw: inception_v4(**kw),
        flavours=[SourceFlavour(
            "timm", lambda keys: "features.0.conv.weight" in keys and "last_linear.weight" in keys, INCEPTION_RULES,
            "timm inception_v4 (inception_v4.tf_in1k; Cadene inceptionv4-8e4777a0.pth with 1001 classes)",
            _inception_to_reference)],
        reference=ReferenceModel(build=_timm_inception, from_target=paddle_key_to_torch, name="timm inception_v4"),
        input_size=(3, 299, 299),
        description="Inception v4 (timm names), for the non-binary transfer recipes",
    ),
    "resnet50": PortSpec(
        name="resnet50",
        build_model=lambda **kw: create_resnet("resnet50", **kw),
        flavours=[SourceFlavour(
            "torchvision", lambda keys: "conv1.weight" in keys and "layer1.0.conv1.weight" in keys, RESNET_RULES,
            "torchvision / timm resnet50 (IMAGENET1K_V1, IMAGENET1K_V2, resnet50.a1_in1k, ...)", _identity)],
        reference=ReferenceModel(build=_torchvision_resnet50, from_target=paddle_key_to_torch,
                                 name="torchvision resnet50"),
        input_size=(3, 224, 224),
        description="ResNet-50 (common/backbones), for the fine-grained baseline",
    ),
}
