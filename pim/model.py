"""PIM models: a backbone from the registry below + the plug-in module (`pim/pim_module.py`).

Backbones (``MODEL.NAME``), each giving four feature levels ``layer1`` .. ``layer4``:

=================================  =========================================================  =================
name                               levels                                                     FPN default
=================================  =========================================================  =================
swin_{tiny,small,base,large}_*     stage outputs, merge at the stage end (common/backbones/swin.py)       Linear + Conv
resnet18/34/50/101/152             stage outputs (common/backbones/resnet.py)                 Conv + Bilinear
vit_base_patch16_224[_miil]        blocks 8..11 incl. the class token (common/backbones/vit.py)            Linear + Conv
efficientnet_b0 .. b7              features.4 .. features.7 (common/backbones/efficientnet.py)             Conv + Bilinear
=================================  =========================================================  =================

The paper's result uses ``swin_large_patch4_window12_384`` (what the reference calls "swin-t").
"""
from common.backbones.resnet import RESNET_DEPTHS, create_resnet
from common.models import register_model
from common.backbones.efficientnet import EFFICIENTNET_VARIANTS, create_efficientnet
from pim.pim_module import FeatureInfo, PluginModel
from common.backbones.swin import SWIN_VARIANTS, create_swin
from common.backbones.vit import VIT_VARIANTS, create_vit

__all__ = ["BACKBONES", "family_of", "create_backbone", "build_pim", "build_from_config", "default_image_size"]

LAYER_NAMES = ["layer1", "layer2", "layer3", "layer4"]
# family -> (default FPN projection, default upsampling, default drop-path rate, reference image size)
FAMILIES = {
    "swin": ("Linear", "Conv", 0.1, None),
    "resnet": ("Conv", "Bilinear", 0.0, 448),
    "vit": ("Linear", "Conv", 0.0, 448),
    "efficientnet": ("Conv", "Bilinear", 0.2, 448),
}
BACKBONES = {**{n: "swin" for n in SWIN_VARIANTS}, **{n: "resnet" for n in RESNET_DEPTHS},
             **{n: "vit" for n in VIT_VARIANTS}, **{n: "efficientnet" for n in EFFICIENTNET_VARIANTS}}


def family_of(name):
    if name not in BACKBONES:
        raise KeyError(f"unknown PIM backbone '{name}'; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def default_image_size(name):
    fam = family_of(name)
    return SWIN_VARIANTS[name][-1] if fam == "swin" else FAMILIES[fam][3]


# the paper's selection (Swin-L 384, MODEL.PIM.NUM_SELECTS' default) and the tokens of its levels
PAPER_SELECTS, PAPER_TOKENS = (2048, 512, 128, 32), (2304, 576, 144, 144)
LEVEL_STRIDES = {"swin": (8, 16, 32, 32), "resnet": (4, 8, 16, 32), "efficientnet": (16, 16, 32, 32)}


def level_tokens(name, img_size):
    """Tokens of layer1..layer4 of backbone `name` at its default layout and `img_size` px."""
    fam = family_of(name)
    if fam == "vit":
        return tuple([(img_size // VIT_VARIANTS[name][0]) ** 2 + 1] * 4)
    return tuple((-(-img_size // s)) ** 2 for s in LEVEL_STRIDES[fam])


def fitting_num_selects(name, img_size):
    """Per level, the paper's share of the level's tokens (2048 of 2304, ..., 32 of 144), at most the paper's count:
    the paper's NUM_SELECTS at 384 px and above, proportionally fewer on smaller grids."""
    tokens = level_tokens(name, img_size)
    return [min(sel, max(1, round(sel * t / pt))) for sel, t, pt in zip(PAPER_SELECTS, tokens, PAPER_TOKENS)]


for _backbone in BACKBONES:
    register_model(f"pim_{_backbone}", "pim", model_name=_backbone, image_size=default_image_size(_backbone),
                   crop_pct=0.875, interpolation="bilinear", num_classes=200,
                   opts=lambda b=_backbone: {"MODEL.PIM.NUM_SELECTS": fitting_num_selects(b, default_image_size(b))},
                   description=f"Plug-in Module on {_backbone}")


def _ceil_halvings(size, times):
    for _ in range(times):
        size = (size + 1) // 2
    return size


def create_backbone(name, img_size=None, drop_path=None, **overrides):
    """(backbone layer, [FeatureInfo] for layer1..layer4). `overrides` go to the family's constructor."""
    fam = family_of(name)
    img_size = img_size or default_image_size(name)
    if drop_path is None or drop_path < 0:
        drop_path = FAMILIES[fam][2]
    if fam == "swin":
        net = create_swin(name, img_size=img_size, drop_path_rate=drop_path, **overrides)
        infos = [FeatureInfo(n, "tokens", c, g) for n, c, g in zip(LAYER_NAMES, net.stage_channels, net.resolutions)]
    elif fam == "resnet":
        if overrides:
            raise ValueError(f"ResNet backbones take no overrides, got {sorted(overrides)}")
        net = create_resnet(name, num_classes=0)
        infos = []
        for i, (n, c) in enumerate(zip(LAYER_NAMES, net.stage_channels)):
            h = _ceil_halvings(img_size, 2 + i)  # stem conv and max-pool halve, then layer2..4
            infos.append(FeatureInfo(n, "map", c, (h, h)))
    elif fam == "vit":
        net = create_vit(name, img_size=img_size, drop_path_rate=drop_path, **overrides)
        infos = [FeatureInfo(n, "tokens", c, g, prefix=1)
                 for n, c, g in zip(LAYER_NAMES, net.stage_channels, net.token_grids())]
    else:
        net = create_efficientnet(name, stochastic_depth_prob=drop_path, **overrides)
        infos = [FeatureInfo(n, "map", shape[0], shape[1:])
                 for n, (_, shape) in zip(LAYER_NAMES, net.feature_shapes(img_size))]
    if len(infos) != 4:
        raise ValueError(f"backbone {name} gives {len(infos)} feature levels; PIM uses 4")
    return net, infos


def build_pim(backbone, num_classes, img_size=None, use_fpn=True, fpn_size=512, proj_type="auto",
              upsample_type="auto", use_selection=True, num_selects=(32, 32, 32, 32), use_combiner=True,
              comb_proj_size=None, drop_path=None, backbone_kwargs=None):
    fam = family_of(backbone)
    net, infos = create_backbone(backbone, img_size, drop_path, **(backbone_kwargs or {}))
    proj = FAMILIES[fam][0] if proj_type in ("auto", "", None) else proj_type
    up = FAMILIES[fam][1] if upsample_type in ("auto", "", None) else upsample_type
    if up == "Bilinear" and proj != "Conv":
        raise ValueError(f"{backbone}: Bilinear upsampling needs the Conv projection (got {proj})")
    model = PluginModel(net, infos, num_classes, use_fpn=use_fpn, fpn_size=fpn_size, proj_type=proj,
                        upsample_type=up, use_selection=use_selection, num_selects=list(num_selects),
                        use_combiner=use_combiner, comb_proj_size=comb_proj_size)
    model.backbone_name = backbone
    model.image_size = img_size or default_image_size(backbone)
    return model


def backbone_overrides(config):
    """The MODEL.PIM.{SWIN,VIT,EFFICIENTNET} keys that are set, as constructor arguments."""
    p = config.MODEL.PIM
    fam = family_of(config.MODEL.NAME)
    out = {}
    if fam == "swin":
        s = p.SWIN
        for key, arg in (("PATCH_SIZE", "patch_size"), ("EMBED_DIM", "embed_dim"), ("WINDOW_SIZE", "window_size")):
            if s[key] > 0:
                out[arg] = int(s[key])
        if s.DEPTHS:
            out["depths"] = tuple(int(d) for d in s.DEPTHS)
        if s.NUM_HEADS:
            out["num_heads"] = tuple(int(d) for d in s.NUM_HEADS)
    elif fam == "vit":
        v = p.VIT
        for key, arg in (("PATCH_SIZE", "patch_size"), ("EMBED_DIM", "embed_dim"), ("DEPTH", "depth"),
                         ("NUM_HEADS", "num_heads")):
            if v[key] > 0:
                out[arg] = int(v[key])
        if v.RETURN_BLOCKS:
            out["return_blocks"] = [int(b) for b in v.RETURN_BLOCKS]
    elif fam == "efficientnet":
        e = p.EFFICIENTNET
        if e.WIDTH_MULT > 0:
            out["width_mult"] = float(e.WIDTH_MULT)
        if e.DEPTH_MULT > 0:
            out["depth_mult"] = float(e.DEPTH_MULT)
    return out


def build_from_config(config):
    p = config.MODEL.PIM
    return build_pim(config.MODEL.NAME, config.MODEL.NUM_CLASSES, img_size=config.DATA.IMAGE_SIZE,
                     use_fpn=p.USE_FPN, fpn_size=p.FPN_SIZE, proj_type=p.PROJ_TYPE, upsample_type=p.UPSAMPLE_TYPE,
                     use_selection=p.USE_SELECTION, num_selects=[int(n) for n in p.NUM_SELECTS],
                     use_combiner=p.USE_COMBINER, comb_proj_size=p.COMB_PROJ_SIZE or None,
                     drop_path=config.MODEL.DROPPATH, backbone_kwargs=backbone_overrides(config))
