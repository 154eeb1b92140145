"""Dynamic MLP config keys on top of the common defaults (the iNat21 recipe: configs/dynamic_mlp/inat21_recipe.yaml)."""
from yacs.config import CfgNode as CN

from common.config import get_default_config


def get_config():
    c = get_default_config()
    c.MODEL.METHOD = "dynamic_mlp"
    c.MODEL.TYPE = "DynamicMLP"
    c.MODEL.NAME = "resnet50_dynamic_mlp_c"   # see dynamic_mlp/model.py MODELS; *_image_only for no metadata
    c.MODEL.NUM_CLASSES = 10000
    c.MODEL.DYNAMIC_MLP = CN()
    c.MODEL.DYNAMIC_MLP.TYPE = ""             # '' keeps the variant of MODEL.NAME; 'a' | 'b' | 'c'; 'none': image-only
    c.MODEL.DYNAMIC_MLP.METADATA = "geo_temporal"  # 'geo_temporal' (6 inputs) | 'geo' (4) | 'temporal' (2)
    c.MODEL.DYNAMIC_MLP.D = 256               # fusion width d (also the location embedding size)
    c.MODEL.DYNAMIC_MLP.H = 64                # hidden width h of the inner dynamic blocks
    c.MODEL.DYNAMIC_MLP.N = 2                 # number of dynamic blocks N
    c.MODEL.DYNAMIC_MLP.LOC_WIDTH = 256       # location encoder width
    c.MODEL.DYNAMIC_MLP.LOC_BLOCKS = 4        # residual blocks in the location encoder
    c.MODEL.DYNAMIC_MLP.LOC_DROPOUT = 0.5     # dropout inside those blocks (torch's default in the reference)
    # DATA.DATASET 'inat21_json': the published iNat21 files under DATA_PATH (joined on image_id)
    c.DATA.TRAIN_JSON = "train_mini.json"     # or train.json for the full set
    c.DATA.VAL_JSON = "val.json"
    return c
