"""ResMLP config keys on top of the common defaults; the ImageNet recipe lives in configs/resmlp/imagenet_recipe.yaml."""
from yacs.config import CfgNode as CN

from common.config import get_default_config


def get_config():
    c = get_default_config()
    c.MODEL.METHOD = "resmlp"
    c.MODEL.TYPE = "ResMLP"
    c.MODEL.NAME = "resmlp_24_224"
    c.MODEL.DROPPATH = 0.1
    # Architecture overrides; -1 keeps the value of the variant named by MODEL.NAME.
    c.MODEL.MIXER = CN()
    c.MODEL.MIXER.PATCH_SIZE = -1
    c.MODEL.MIXER.EMBED_DIM = -1
    c.MODEL.MIXER.DEPTH = -1
    c.MODEL.MIXER.MLP_RATIO = -1.0
    c.MODEL.MIXER.INIT_VALUES = -1.0
    return c
