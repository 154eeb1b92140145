"""PIM: PyTorch -> Paddle weight mapping. Discovered by ``python -m common.port``; also a CLI of its own for official
PIM checkpoints of any configuration:

    python pim/port_weights.py -cfg configs/pim/cub_swin_large_384.yaml --src best.pt --dst pim_cub.pdparams

``PORT_SPECS`` (for ``python -m common.port --model NAME``):

* ``pim_swin_large_patch4_window12_384``: the paper's CUB model (FPN 1536, selects 2048/512/128/32, 200 classes;
  ``--num-classes 555`` for NABirds) from the official ``best.pt`` / ``last.pt`` (weights under ``model``).
  Other configurations (another backbone, FPN size or selection) go through the ``-cfg`` CLI above.
* ``pim_backbone_<backbone>`` for every backbone of `pim.model.BACKBONES`: ImageNet weights for the backbone alone,
  written under ``backbone.``; train from them with ``-pretrained FILE -opts MODEL.PRETRAINED_NEW_HEAD True``
  (the plug-in module is new). Accepted sources: timm / Microsoft Swin checkpoints in either layout, torchvision or
  timm ResNets, timm ViTs (the position embedding is resampled to the model's grid), torchvision EfficientNets.
  ``--verify`` compares the backbone's four feature levels with timm / torchvision (needs torch).

Swin layouts: the original one (timm < 0.9, Microsoft, the PIM reference) merges patches at the END of stage i
(``layers.i.downsample``, i = 0..2) -- the layout of this suite; timm >= 0.9 merges at the START of stage i+1
(``layers.i+1.downsample``), so those keys move one stage down. The patch-merging channel order is the same in both.

Rules common to all: torch Linear weights [out, in] are transposed (every 2-D ``*.weight``; the relative-position
tables and ``combiner.adj1`` are not weights and stay), BatchNorm statistics renamed, Conv1d weights
[out, in, 1] kept (Paddle's Conv1D has the same layout), buffers (``relative_position_index``, ``attn_mask``,
``num_batches_tracked``) and parts PIM does not use (the backbones' final norm and classifier) dropped.
"""
import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.backbones.resnet import torchvision_resnet_rules  # noqa: E402
from common.porting import (Drop, PortSpec, PrefixRename, ReferenceModel, RegexRename, SourceFlavour,  # noqa: E402
                            Transpose, batchnorm_rules, key_matcher)
from pim.model import BACKBONES, default_image_size, family_of  # noqa: E402
from common.backbones.vit import resize_pos_embed  # noqa: E402

__all__ = ["PORT_SPECS", "PIM_RULES", "backbone_rules", "swin_new_to_old", "main"]

BUFFERS = [Drop(r".*relative_position_index", reason="recomputed from the window size"),
           Drop(r".*attn_mask", reason="recomputed from the window geometry")]
LINEAR_T = Transpose(r".*\.weight", ndim=2)


class ResizePosEmbed:
    """Value rule: a ViT position embedding of another grid is resampled to the model's (class token kept)."""
    stage = "value"

    def __init__(self, pattern):
        self.pattern = pattern
        self._match = key_matcher(pattern)

    def applies(self, key, value):
        return self._match(key) and value.ndim == 3

    def apply(self, value, target_shape):
        if target_shape is None or tuple(value.shape) == tuple(target_shape):
            return value
        return resize_pos_embed(value, target_shape[1])

    def __repr__(self):
        return f"ResizePosEmbed({self.pattern!r})"


def _shift_down(match):
    return f"layers.{int(match.group(1)) - 1}.downsample."


# --------------------------------------------------------------------------------------------------- rule lists
# official PIM checkpoints (the whole model, backbone under 'backbone.')
PIM_RULES = BUFFERS + [
    Drop(r"backbone\.norm", reason="the backbone's final norm: PIM reads the stage outputs"),
    Drop(r"backbone\.head", reason="the backbone's classifier: unused by PIM"),
    Drop(r"backbone\.fc", reason="the backbone's classifier: unused by PIM"),
] + batchnorm_rules() + [ResizePosEmbed(r"backbone\.pos_embed"), LINEAR_T]


def backbone_rules(family, layout="old"):
    """Rules for a backbone-only checkpoint of `family` into ``backbone.*`` of a PIM model."""
    if family == "swin":
        rules = BUFFERS + [Drop(r"norm", reason="final norm: unused by PIM"),
                           Drop(r"head", reason="classifier: unused by PIM")]
        if layout == "new":
            rules.append(RegexRename(r"^layers\.(\d+)\.downsample\.", _shift_down))
        return rules + [PrefixRename("", "backbone."), LINEAR_T]
    if family == "resnet":
        return [Drop(r"fc", reason="classifier: unused by PIM")] + torchvision_resnet_rules("backbone.")
    if family == "vit":
        return [Drop(r"norm", reason="final norm: unused by PIM"), Drop(r"fc_norm"),
                Drop(r"head", reason="classifier: unused by PIM"), PrefixRename("", "backbone."),
                ResizePosEmbed(r"backbone\.pos_embed"), LINEAR_T]
    if family == "efficientnet":
        return [Drop(r"features\.8", reason="final 1x1 conv: after the last level PIM reads"),
                Drop(r"classifier", reason="classifier: unused by PIM")] + batchnorm_rules() + \
            [PrefixRename("", "backbone.")]
    raise KeyError(family)


def swin_new_to_old(state):
    """timm >= 0.9 Swin keys -> the original layout (for feeding either kind to the same reference)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", _shift_down, k)
        out[k.replace("head.fc.", "head.")] = v
    return out


# ------------------------------------------------------------------------------------ references for --verify
def _torch_feature_extractor(family, ref):
    """A torch module returning the four PIM feature levels of timm / torchvision model `ref`, flattened and
    concatenated (the same as `BackboneOnly.forward` on the Paddle side)."""
    import torch

    class Levels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ref = ref

        def levels(self, x):
            m = self.ref
            if family == "swin":  # timm >= 0.9: NHWC, merge at the start of stages 1..3
                h = m.layers[0](m.patch_embed(x))
                outs = []
                for i in (1, 2, 3):
                    h = m.layers[i].downsample(h)
                    outs.append(h)
                    h = m.layers[i].blocks(h)
                outs.append(h)
                return outs
            if family == "resnet":
                h = m.maxpool(m.act1(m.bn1(m.conv1(x)))) if hasattr(m, "act1") else \
                    m.maxpool(m.relu(m.bn1(m.conv1(x))))
                outs = []
                for stage in (m.layer1, m.layer2, m.layer3, m.layer4):
                    h = stage(h)
                    outs.append(h)
                return outs
            if family == "vit":
                h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
                outs = []
                for i, blk in enumerate(m.blocks):
                    h = blk(h)
                    if i >= len(m.blocks) - 4:
                        outs.append(h)
                return outs
            outs = []
            h = x
            for i in range(8):
                h = m.features[i](h)
                if i >= 4:
                    outs.append(h)
            return outs

        def forward(self, x):
            return torch.cat([o.reshape(o.shape[0], -1) for o in self.levels(x)], dim=1)

    return Levels()


def _reference_builder(name):
    family = family_of(name)
    size = default_image_size(name)

    def build(num_classes=None):
        if family == "swin":
            import timm
            ref = timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
        elif family == "resnet":
            import torchvision
            ref = getattr(torchvision.models, name)()
        elif family == "vit":
            import timm
            ref = timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
        else:
            import torchvision
            ref = getattr(torchvision.models, name)()
        return _torch_feature_extractor(family, ref)

    return build


def _to_reference(family, layout):
    def convert(state, model):
        state = dict(state)
        if family == "swin" and layout == "old":
            from timm.models.swin_transformer import checkpoint_filter_fn
            state = checkpoint_filter_fn(state, model.ref)
        if family == "vit":
            pe = state.get("pos_embed")
            want = tuple(model.ref.pos_embed.shape)
            if pe is not None and tuple(pe.shape) != want:  # the same resampling as the port
                state["pos_embed"] = resize_pos_embed(np.asarray(pe), want[1])
        # the reference is built without a classifier (timm) or with torchvision's own: keep what it has
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        out = {"ref." + k: v for k, v in state.items()}
        return {k: v for k, v in out.items() if shapes.get(k) == tuple(v.shape)}
    return convert


def _from_target(key, value):
    raise KeyError(f"{key}: a backbone port has no keys left for the model to initialise")


# ---------------------------------------------------------------------------------------------------- specs
class BackboneOnly:
    """Builds a Paddle layer holding `backbone` (keys ``backbone.*``) whose forward gives the four PIM levels
    flattened and concatenated; the written file loads into any PIM model with that backbone."""

    @staticmethod
    def build(name, **overrides):
        import paddle
        import paddle.nn as nn

        from pim.model import create_backbone

        overrides.pop("num_classes", None)
        net, _ = create_backbone(name, **overrides)

        class Holder(nn.Layer):
            def __init__(self):
                super().__init__()
                self.backbone = net

            def forward(self, x):
                feats = net.stage_features(x) if hasattr(net, "stage_features") else net(x)
                return paddle.concat([f.reshape([f.shape[0], -1]) for f in feats], axis=1)

        return Holder()


def _backbone_flavours(name):
    family = family_of(name)
    if family == "swin":
        return [
            SourceFlavour("swin_timm", lambda keys: "layers.0.downsample.reduction.weight" not in keys and
                          any(k.startswith("layers.1.downsample.") for k in keys),
                          backbone_rules("swin", "new"), "timm >= 0.9 Swin (merge at the start of a stage)",
                          _to_reference("swin", "new")),
            SourceFlavour("swin_original", lambda keys: "layers.0.downsample.reduction.weight" in keys,
                          backbone_rules("swin", "old"),
                          "original Swin layout: Microsoft releases, timm < 0.9 (merge at the end of a stage)",
                          _to_reference("swin", "old")),
        ]
    desc = {"resnet": "torchvision / timm ResNet", "vit": "timm ViT (pos_embed resampled to the model's grid)",
            "efficientnet": "torchvision EfficientNet"}[family]
    probe = {"resnet": "layer1.0.conv1.weight", "vit": "patch_embed.proj.weight",
             "efficientnet": "features.0.0.weight"}[family]
    return [SourceFlavour(family, lambda keys: probe in keys, backbone_rules(family), desc,
                          _to_reference(family, "new"))]


PIM_FLAVOUR = SourceFlavour(
    "pim", lambda keys: any(k.startswith("backbone.") for k in keys) and
    any(k.startswith(("fpn.", "fpn_classifier_", "selector.", "combiner.", "classifier.")) for k in keys),
    PIM_RULES, "official PIM checkpoint (chou141253/FGVC-PIM best.pt / last.pt, weights under 'model')")


def _paper_model(**overrides):
    from pim.model import build_pim
    nc = overrides.pop("num_classes", None) or 200
    return build_pim("swin_large_patch4_window12_384", nc, img_size=384, fpn_size=1536,
                     num_selects=[2048, 512, 128, 32], **overrides)


def _specs():
    specs = {"pim_swin_large_patch4_window12_384": PortSpec(
        name="pim_swin_large_patch4_window12_384", build_model=_paper_model, flavours=[PIM_FLAVOUR],
        reference=None, input_size=(3, 384, 384),
        description="PIM on Swin-L 384, the paper's CUB model (use --num-classes 555 for NABirds)")}
    for name in BACKBONES:
        size = default_image_size(name)
        specs[f"pim_backbone_{name}"] = PortSpec(
            name=f"pim_backbone_{name}",
            build_model=lambda _n=name, **kw: BackboneOnly.build(_n, **kw),
            flavours=_backbone_flavours(name),
            reference=ReferenceModel(build=_reference_builder(name), from_target=_from_target,
                                     name=f"{'timm' if family_of(name) in ('swin', 'vit') else 'torchvision'} "
                                          f"{name} feature levels"),
            input_size=(3, size, size),
            description=f"{name} backbone weights for PIM (keys under backbone.)")
    return specs


PORT_SPECS = _specs()


# ------------------------------------------------------------------------------------------ config-driven CLI
def main(argv=None):
    """Port an official PIM checkpoint for the model that a config describes."""
    from common.cli import build_parser as common_parser, config_from_args
    from common.config import ConfigError
    from common.port import port_to_file
    from pim.method import PIMMethod

    p = argparse.ArgumentParser(prog="python pim/port_weights.py",
                                description="Port an official PIM checkpoint (best.pt / last.pt) to .pdparams for "
                                            "the model described by a config (backbone, FPN, selects, classes).")
    p.add_argument("-cfg", required=True, help="the PIM yaml config of the model")
    p.add_argument("--src", required=True, help="the checkpoint (.pt/.pth, torch zip or legacy; never executed)")
    p.add_argument("--dst", required=True, help="output .pdparams (written atomically)")
    p.add_argument("--key", default=None, help="checkpoint entry holding the weights (default: model)")
    p.add_argument("-opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")
    args = p.parse_args(argv)
    method = PIMMethod()
    try:
        cli = common_parser().parse_args(["-cfg", args.cfg] + (["-opts"] + args.opts if args.opts else []))
        config = config_from_args(cli, method.get_config())
        model = method.build_model(config)   # a config the model cannot be built from is a config error (exit 2)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = PortSpec(name=f"pim ({args.cfg})", build_model=lambda **kw: model, flavours=[PIM_FLAVOUR],
                    description="PIM model of the config")
    return port_to_file(spec, args.src, args.dst, key=args.key, flavour="pim")[0]


if __name__ == "__main__":
    sys.exit(main())
