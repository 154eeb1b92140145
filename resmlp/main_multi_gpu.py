"""ResMLP: train or evaluate.  python resmlp/main_multi_gpu.py -cfg configs/resmlp/resmlp_24_224.yaml ..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.method import ClassificationMethod  # noqa: E402
from common.runner import main  # noqa: E402
from resmlp.config import get_config  # noqa: E402
from resmlp.resmlp import create_resmlp  # noqa: E402


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


if __name__ == "__main__":
    main(ResMLPMethod())
