"""PIM config keys on top of the common defaults.

The defaults describe the paper's CUB-200-2011 model (Swin-L 384 backbone, FPN 1536, selects 2048/512/128/32,
loss weights 0.5/0/5/1) and switch off the generic augmentations PIM never used (RandAugment, colour jitter,
random erasing, mixup, label smoothing). The training recipe lives in configs/pim/fgvc_recipe.yaml.
"""
from yacs.config import CfgNode as CN

from common.config import get_default_config


def get_config():
    c = get_default_config()
    c.MODEL.METHOD = "pim"
    c.MODEL.TYPE = "PIM"
    c.MODEL.NAME = "swin_large_patch4_window12_384"  # the backbone; see pim/model.py BACKBONES
    c.MODEL.NUM_CLASSES = 200
    c.MODEL.DROPPATH = -1.0        # < 0: the backbone's own default (Swin 0.1, ViT 0.0, EfficientNet 0.2)
    c.MODEL.PIM = CN()
    c.MODEL.PIM.USE_FPN = True
    c.MODEL.PIM.FPN_SIZE = 1536
    c.MODEL.PIM.PROJ_TYPE = "auto"       # 'Linear' | 'Conv' | 'auto' (Linear for Swin/ViT, Conv for CNNs)
    c.MODEL.PIM.UPSAMPLE_TYPE = "auto"   # 'Conv' (1x1 over tokens) | 'Bilinear' | 'auto' (Conv / Bilinear)
    c.MODEL.PIM.USE_SELECTION = True
    c.MODEL.PIM.NUM_SELECTS = [2048, 512, 128, 32]  # tokens kept per level, layer1..layer4
    c.MODEL.PIM.USE_COMBINER = True
    c.MODEL.PIM.COMB_PROJ_SIZE = 0       # combiner width without the FPN; 0: FPN_SIZE
    c.MODEL.PIM.LAMBDA_B = 0.5           # per-level CE on token-averaged logits
    c.MODEL.PIM.LAMBDA_S = 0.0           # CE of every selected token
    c.MODEL.PIM.LAMBDA_N = 5.0           # MSE(tanh(dropped-token logits), -1)
    c.MODEL.PIM.LAMBDA_C = 1.0           # combiner CE
    c.MODEL.PIM.MAIN_HEAD = "auto"       # the prediction -eval reports and 'best' follows: 'auto' (combiner, else
    #                                      sum, else original), 'combiner', 'sum', 'layer1'.., 'highest-k'
    c.MODEL.PIM.HIGHEST_K = []           # extra heads: mean softmax of the k most confident heads per image
    # backbone overrides (-1 / []: the named variant's value); used for small test and demo models
    c.MODEL.PIM.SWIN = CN()
    c.MODEL.PIM.SWIN.PATCH_SIZE = -1
    c.MODEL.PIM.SWIN.EMBED_DIM = -1
    c.MODEL.PIM.SWIN.DEPTHS = []
    c.MODEL.PIM.SWIN.NUM_HEADS = []
    c.MODEL.PIM.SWIN.WINDOW_SIZE = -1
    c.MODEL.PIM.VIT = CN()
    c.MODEL.PIM.VIT.PATCH_SIZE = -1
    c.MODEL.PIM.VIT.EMBED_DIM = -1
    c.MODEL.PIM.VIT.DEPTH = -1
    c.MODEL.PIM.VIT.NUM_HEADS = -1
    c.MODEL.PIM.VIT.RETURN_BLOCKS = []   # default: the last four blocks
    c.MODEL.PIM.EFFICIENTNET = CN()
    c.MODEL.PIM.EFFICIENTNET.WIDTH_MULT = -1.0
    c.MODEL.PIM.EFFICIENTNET.DEPTH_MULT = -1.0

    # PIM's own train-time extras (after flip): Gaussian blur and sharpening, each with its probability
    c.AUG.BLUR_PROB = 0.1
    c.AUG.BLUR_KERNEL = 5
    c.AUG.BLUR_SIGMA = [0.1, 5.0]
    c.AUG.SHARPEN_PROB = 0.1
    c.AUG.SHARPEN_FACTOR = 1.5
    c.AUG.RAND_AUGMENT = ""
    c.AUG.COLOR_JITTER = 0.0
    c.AUG.RE_PROB = 0.0
    c.AUG.MIXUP_PROB = 0.0
    c.TRAIN.SMOOTHING = 0.0
    c.EVAL.TOPK = [3]                    # the reference reports top-1 and top-3 per head
    return c
