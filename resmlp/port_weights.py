"""ResMLP: PyTorch -> Paddle weight mapping, discovered by ``python -m common.port``.

Accepted source layouts (told apart by their keys):

* ``timm``: ``stem.proj.*``, ``blocks.{i}.{norm1,norm2}.{alpha,beta}`` [1, 1, C], ``blocks.{i}.linear_tokens``,
  ``blocks.{i}.mlp_channels.{fc1,fc2}``, ``blocks.{i}.{ls1,ls2}``, ``norm``, ``head``.
* ``fb``: the authors' released files (``resmlp_*.pth``, usually under ``model``): ``patch_embed.proj``,
  ``blocks.{i}.attn`` (the token-mixing Linear), ``blocks.{i}.mlp``, ``blocks.{i}.gamma_{1,2}``, 1-D alpha/beta.
* ``paddle``: our own / PaddleViT ``.pdparams`` (same names and layouts as this model; only shapes are checked).

Linear weights are [out, in] in torch and [in, out] in Paddle, so every 2-D weight is transposed. The token-mixing
weight is square (196 x 196, or 784 x 784 for big-24), so only a numerical comparison catches a missing transpose.
"""
import re

from common.porting import PortSpec, PrefixRename, ReferenceModel, RegexRename, Reshape, SourceFlavour, Transpose
from resmlp.resmlp import RESMLP_ALIASES, RESMLP_VARIANTS, create_resmlp

TIMM_RULES = [
    PrefixRename("stem.proj.", "patch_embed.patch_embed."),
    PrefixRename("blocks.", "mixer_layers."),
    Transpose(r".*\.weight", ndim=2),
]

FB_RULES = [
    PrefixRename("patch_embed.proj.", "patch_embed.patch_embed."),
    RegexRename(r"^blocks\.(\d+)\.attn\.", r"mixer_layers.\1.linear_tokens."),
    RegexRename(r"^blocks\.(\d+)\.mlp\.", r"mixer_layers.\1.mlp_channels."),
    RegexRename(r"^blocks\.(\d+)\.gamma_([12])$", r"mixer_layers.\1.ls\2"),
    PrefixRename("blocks.", "mixer_layers."),
    Reshape(r".*\.(alpha|beta)"),  # FB keeps the affine parameters 1-D [C]; ours are [1, 1, C]
    Transpose(r".*\.weight", ndim=2),
]

PADDLE_RULES = []  # PaddleViT / this suite: names and layouts already match


def _timm_reference(name):
    def build(num_classes=None):
        import timm
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=False, **kwargs)
    return build


def paddle_key_to_timm(key, value):
    """One Paddle tensor -> timm's key and layout (the inverse of TIMM_RULES)."""
    if key.startswith("patch_embed.patch_embed."):
        key = "stem.proj." + key[len("patch_embed.patch_embed."):]
    key = re.sub(r"^mixer_layers\.", "blocks.", key)
    if key.endswith(".weight") and value.ndim == 2:
        value = value.T.copy()
    return key, value


def _identity(state, model):
    return state


def _fb_to_timm(state, model):
    from timm.models.mlp_mixer import checkpoint_filter_fn
    return checkpoint_filter_fn(state, model)


def _paddle_to_timm(state, model):
    import numpy as np
    return dict(paddle_key_to_timm(k, np.asarray(v)) for k, v in state.items())


FLAVOURS = [
    SourceFlavour("timm", lambda keys: "stem.proj.weight" in keys, TIMM_RULES,
                  "timm checkpoints (resmlp_*.fb_in1k, .fb_distilled_in1k, .fb_in22k_ft_in1k)", _identity),
    SourceFlavour("fb", lambda keys: "patch_embed.proj.weight" in keys, FB_RULES,
                  "raw Facebook checkpoints (dl.fbaipublicfiles.com/deit/resmlp*.pth)", _fb_to_timm),
    SourceFlavour("paddle", lambda keys: "patch_embed.patch_embed.weight" in keys, PADDLE_RULES,
                  "PaddleViT / this suite's .pdparams", _paddle_to_timm),
]


def _spec(name):
    base = RESMLP_ALIASES.get(name, name)
    return PortSpec(
        name=name,
        build_model=lambda **overrides: create_resmlp(name, **overrides),
        flavours=FLAVOURS,
        reference=ReferenceModel(build=_timm_reference(base), from_target=paddle_key_to_timm,
                                 name=f"timm {base}"),
        input_size=(3, 224, 224),
        description=f"ResMLP {base}" + (f" (architecture of {base})" if base != name else ""),
        aliases_of=base if base != name else "",
    )


PORT_SPECS = {name: _spec(name) for name in list(RESMLP_VARIANTS) + list(RESMLP_ALIASES)}
