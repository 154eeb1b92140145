"""What ResMLP tells the shared engine: its config keys and how to build the model."""
from common.method import ClassificationMethod
from resmlp.config import get_config
from resmlp.resmlp import create_resmlp


class ResMLPMethod(ClassificationMethod):
    name = "resmlp"

    def get_config(self):
        return get_config()

    def build_model(self, config):
        m = config.MODEL
        overrides = dict(num_classes=m.NUM_CLASSES, image_size=config.DATA.IMAGE_SIZE,
                         in_channels=config.DATA.IMAGE_CHANNELS, dropout=m.DROPOUT, droppath=m.DROPPATH)
        for key, arg in (("PATCH_SIZE", "patch_size"), ("EMBED_DIM", "embed_dim"), ("DEPTH", "depth"),
                         ("MLP_RATIO", "mlp_ratio"), ("INIT_VALUES", "init_values")):
            value = m.MIXER[key]
            if value > 0:
                overrides[arg] = value
        return create_resmlp(m.NAME, **overrides)
