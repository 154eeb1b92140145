"""What a method's ``port_weights.py`` declares so that ``python -m common.port`` can port its models.

A method folder exposes ``PORT_SPECS = {model name: PortSpec(...)}``. A spec knows how to build the Paddle model,
which source layouts ("flavours": timm, the authors' raw checkpoints, PaddleViT, ...) it accepts and how to tell
them apart from the keys, the rules for each, and optionally how to build the PyTorch reference model for
``--verify``.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

__all__ = ["SourceFlavour", "ReferenceModel", "PortSpec"]


@dataclass
class SourceFlavour:
    """One layout of source checkpoints.

    detect: ``keys (set of str) -> bool``; the first flavour of a spec whose `detect` is true is used.
    rules: the rule list for :func:`common.porting.rules.port_state_dict`.
    to_reference: for ``--verify``: ``(state dict as loaded by torch, reference model) -> state dict`` that the
        reference model's ``load_state_dict`` accepts (identity for the reference's own layout). ``None`` when the
        flavour cannot be fed to the reference.
    """
    name: str
    detect: Callable
    rules: Sequence
    description: str = ""
    to_reference: Optional[Callable] = None


@dataclass
class ReferenceModel:
    """The PyTorch model a port is checked against (``--verify``).

    build: ``num_classes -> torch.nn.Module`` (random weights; must not download anything).
    from_target: ``(paddle key, ndarray) -> (reference key, ndarray)`` for single tensors; used to give both models
        the same values for keys the port left to the model (``--allow-missing``) and to feed Paddle-layout sources
        to the reference.
    """
    build: Callable
    from_target: Optional[Callable] = None
    name: str = ""


@dataclass
class PortSpec:
    """build_model: ``(**overrides) -> paddle.nn.Layer``; called with ``num_classes=N`` when the user asks for it."""
    name: str
    build_model: Callable
    flavours: Sequence
    reference: Optional[ReferenceModel] = None
    input_size: tuple = (3, 224, 224)
    description: str = ""
    aliases_of: str = ""
    extra: dict = field(default_factory=dict)

    def flavour(self, name):
        for f in self.flavours:
            if f.name == name:
                return f
        raise KeyError(f"model '{self.name}' has no source flavour '{name}'; known: "
                       f"{', '.join(f.name for f in self.flavours)}")

    def detect_flavour(self, keys):
        keys = set(keys)
        for f in self.flavours:
            if f.detect(keys):
                return f
        sample = ", ".join(sorted(keys)[:12])
        raise ValueError(f"cannot tell which checkpoint layout this is for '{self.name}' (known layouts: "
                         f"{', '.join(f.name for f in self.flavours)}); first keys: {sample}. "
                         f"Choose one with --flavour, or select the right entry with --key")
