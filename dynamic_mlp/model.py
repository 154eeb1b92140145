"""Backbones with the Dynamic MLP head, and the named variants (a small registry, like timm's).

A Dynamic MLP model is its backbone with two more sub-layers at the top level, exactly as in the reference, so the
state-dict keys are the reference's: ``<backbone keys>``, ``fc.*``, ``loc_net.*`` (the location/date encoder) and
``loc_att.*`` (the fusion). Forward: ``logits = fc(loc_att(pooled(image), loc_net(meta)))``. An image-only model is
the plain backbone (``fc(pooled(image))``).

Names: ``<backbone>_dynamic_mlp_{a,b,c}`` and ``<backbone>_image_only`` for the backbones in ``BACKBONES``.
"""
import paddle

from common.backbones.resnet import RESNET_DEPTHS, ResNet
from common.config import ConfigError
from common.init import reset_like_torch
from common.models import register_model
from dynamic_mlp.dynamic_mlp import VARIANTS, FCNet, build_fusion
from dynamic_mlp.metadata import input_dim
from common.backbones.sk2res2net import SK2RES2NET_DEPTHS, SK2Res2Net


class _DynamicMLPHead:
    """Adds the metadata encoder and the fusion to a backbone that has `forward_features`, `drop` and `fc`."""

    def _add_dynamic_mlp(self, mlp_type="c", mlp_cin=6, mlp_d=256, mlp_h=64, mlp_n=2, loc_width=256, loc_blocks=4,
                         loc_dropout=0.5):
        self.mlp_type, self.mlp_cin = mlp_type, mlp_cin
        self.loc_net = FCNet(mlp_cin, mlp_d, loc_width, loc_blocks, loc_dropout)
        self.loc_att = build_fusion(self.num_features, mlp_type, mlp_d, mlp_h, mlp_n)
        reset_like_torch(self.loc_net)
        reset_like_torch(self.loc_att)

    def forward_parts(self, x, loc=None):
        """{'pooled', 'loc', 'fused', 'logits'}; `loc` None means "metadata unknown" (the all-zero vector)."""
        pooled = self.forward_features(x)
        if loc is None:
            loc = paddle.zeros([pooled.shape[0], self.mlp_cin], dtype=pooled.dtype)
        loc_feature = self.loc_net(loc.astype(pooled.dtype))
        fused = self.loc_att(pooled, loc_feature)
        return {"pooled": pooled, "loc": loc_feature, "fused": fused, "logits": self.fc(self.drop(fused))}

    def forward(self, x, loc=None):
        return self.forward_parts(x, loc)["logits"]

    def classifier_keys(self):
        """What a new head re-learns: the classifier and the whole metadata branch (absent from ImageNet weights)."""
        return [k for k in self.state_dict() if k.startswith(("fc.", "loc_net.", "loc_att."))]


class ResNetDynamicMLP(_DynamicMLPHead, ResNet):
    def __init__(self, block, layers, num_classes=1000, in_channels=3, drop_rate=0.0, **mlp):
        ResNet.__init__(self, block, layers, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)
        self._add_dynamic_mlp(**mlp)


class SK2Res2NetDynamicMLP(_DynamicMLPHead, SK2Res2Net):
    def __init__(self, depth=101, num_classes=1000, in_channels=3, drop_rate=0.0, **mlp):
        SK2Res2Net.__init__(self, depth=depth, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)
        self._add_dynamic_mlp(**mlp)


def image_forward_parts(model, x):
    """{'pooled', 'logits'} for an image-only model (the same keys as `forward_parts`)."""
    pooled = model.forward_features(x)
    return {"pooled": pooled, "logits": model.fc(model.drop(pooled))}


# backbone name -> (kind, argument); ResNet names are torchvision's, from common/backbones
BACKBONES = {name: ("resnet", name) for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")}
BACKBONES.update({f"sk2res2net{d}": ("sk2res2net", d) for d in SK2RES2NET_DEPTHS})
assert all(n in RESNET_DEPTHS for n, (kind, _) in BACKBONES.items() if kind == "resnet")

# name -> (backbone, Dynamic MLP type or None for image-only)
MODELS = {}
for _backbone in BACKBONES:
    MODELS[f"{_backbone}_image_only"] = (_backbone, None)
    for _v in VARIANTS:
        MODELS[f"{_backbone}_dynamic_mlp_{_v}"] = (_backbone, _v)
for _name, (_backbone, _variant) in MODELS.items():
    register_model(_name, "dynamic_mlp", image_size=224, crop_pct=0.875, interpolation="bilinear", num_classes=10000,
                   description=f"{_backbone} + Dynamic MLP-{_variant.upper()}" if _variant else f"{_backbone}, image only")
# the four models of the paper's iNat21 table
PAPER_MODELS = ("resnet50_image_only", "resnet50_dynamic_mlp_c", "sk2res2net101_image_only",
                "sk2res2net101_dynamic_mlp_c")


def create_model(name, num_classes=10000, in_channels=3, drop_rate=0.0, mlp_type=None, metadata="geo_temporal",
                 mlp_d=256, mlp_h=64, mlp_n=2, loc_width=256, loc_blocks=4, loc_dropout=0.5):
    """Build a registered model. `mlp_type` overrides the name's variant: 'a' | 'b' | 'c', or 'none' for
    image-only. `metadata` ('geo_temporal' | 'geo' | 'temporal') sets the encoder's input size (6 / 4 / 2)."""
    if name not in MODELS:
        raise KeyError(f"unknown Dynamic MLP model '{name}'; known: {', '.join(sorted(MODELS))}")
    backbone, variant = MODELS[name]
    if mlp_type:
        variant = None if str(mlp_type).lower() == "none" else str(mlp_type).lower()
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"unknown Dynamic MLP type '{mlp_type}'; use one of {', '.join(VARIANTS)} or 'none'")
    kind, arg = BACKBONES[backbone]
    common_args = dict(num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)
    if variant is None:
        if kind == "resnet":
            block, layers = RESNET_DEPTHS[arg]
            return ResNet(block, layers, **common_args)
        return SK2Res2Net(depth=arg, **common_args)
    mlp = dict(mlp_type=variant, mlp_cin=input_dim(metadata), mlp_d=mlp_d, mlp_h=mlp_h, mlp_n=mlp_n,
               loc_width=loc_width, loc_blocks=loc_blocks, loc_dropout=loc_dropout)
    if kind == "resnet":
        block, layers = RESNET_DEPTHS[arg]
        return ResNetDynamicMLP(block, layers, **common_args, **mlp)
    return SK2Res2NetDynamicMLP(depth=arg, **common_args, **mlp)


def uses_metadata(name, mlp_type=None):
    """Whether the model named `name` (with the MODEL.DYNAMIC_MLP.TYPE override `mlp_type`) takes metadata."""
    variant = MODELS[name][1] if name in MODELS else None
    if mlp_type:
        variant = None if str(mlp_type).lower() == "none" else mlp_type
    return variant is not None


def build_from_config(config):
    m = config.MODEL
    d = m.DYNAMIC_MLP
    try:
        return create_model(m.NAME, num_classes=m.NUM_CLASSES, in_channels=config.DATA.IMAGE_CHANNELS,
                            drop_rate=m.DROPOUT, mlp_type=d.TYPE or None, metadata=d.METADATA, mlp_d=d.D, mlp_h=d.H,
                            mlp_n=d.N, loc_width=d.LOC_WIDTH, loc_blocks=d.LOC_BLOCKS, loc_dropout=d.LOC_DROPOUT)
    except (KeyError, ValueError) as e:  # a bad MODEL.NAME / MODEL.DYNAMIC_MLP.* value: one clear line
        raise ConfigError(e.args[0] if e.args else str(e)) from None
