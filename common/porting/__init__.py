"""PyTorch / safetensors / PaddleViT checkpoints -> Paddle state dicts (see README.md in this folder)."""
from common.porting.reader import (CheckpointFormatError, UnsafePickleError, checkpoint_format, is_tensor_like,
                                   load_checkpoint_any, read_safetensors, read_torch_checkpoint, unwrap_state_dict,
                                   write_safetensors)
from common.porting.recipe import fingerprint, seeded_input, seeded_state
from common.porting.rules import (Cast, Drop, PortError, PortReport, PrefixRename, RegexRename, Reshape, Transpose,
                                  apply_rules, batchnorm_rules, key_matcher, port_state_dict)
from common.porting.spec import PortSpec, ReferenceModel, SourceFlavour

__all__ = [
    "CheckpointFormatError", "UnsafePickleError", "checkpoint_format", "is_tensor_like", "load_checkpoint_any",
    "read_safetensors", "read_torch_checkpoint", "unwrap_state_dict", "write_safetensors", "fingerprint",
    "seeded_input", "seeded_state", "Cast", "Drop", "PortError", "PortReport", "PrefixRename", "RegexRename",
    "Reshape", "Transpose", "apply_rules", "batchnorm_rules", "key_matcher", "port_state_dict", "PortSpec",
    "ReferenceModel", "SourceFlavour",
]
