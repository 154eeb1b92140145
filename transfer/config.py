"""Transfer config keys on top of the common defaults. Recipes live in configs/transfer/*.yaml.

TRANSFER.NEW_LAYERS     N: re-initialise the classifier and the top N-1 body blocks (1 = classifier only)
TRANSFER.NUM_LOWLRS     number of bottom body blocks trained at the low learning rate; -1: one rate for all
TRANSFER.LRS            [classifier, upper blocks, lower blocks] learning rates, given like TRAIN.BASE_LR (same
                        linear scaling, same schedule: each group's rate is TRAIN.BASE_LR's schedule times
                        LRS[i] / TRAIN.BASE_LR); required with NUM_LOWLRS >= 0
TRANSFER.L2SP.*         ENABLE, MODE ('paper' | 'reference'), ALPHA (pretrained -> w0), ALPHA_HIGH (upper group,
                        -1: ALPHA), BETA (new layers -> 0); see transfer/l2sp.py
TRANSFER.CROP_PADDING   zero padding around the image before the training random crop (torchvision padding=)
DATA.NORM_STATS         named mean/std ('imagenet', 'inception', 'aircraft', 'dtd', 'cars'); '' uses DATA.MEAN/STD.
                        Resolved when the config is frozen: DATA.MEAN / DATA.STD then hold the named values, so every
                        reader of the config (transforms, export, prediction, the saved config.yaml) sees them.
"""
from yacs.config import CfgNode as CN

from common.config import ConfigError, get_default_config

# Normalisation statistics by name. aircraft / dtd / cars: the per-dataset values of the non-binary transfer
# reference (timm/data/constants.py and its Cars loader); its code uses them for aircraft and dtd only.
NORM_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "aircraft": ((0.48933587508932375, 0.5183537408957618, 0.5387914411673883),
                 (0.22388883112804625, 0.21641635409388751, 0.24615605842636115)),
    "dtd": ((0.5329876098715876, 0.474260843249454, 0.42627281899380676),
            (0.26549755708788914, 0.25473554309855373, 0.2631728035662832)),
    "cars": ((0.4105214534294453, 0.38574356611082533, 0.3959628699849632),
             (0.28611458811352136, 0.2801378084154138, 0.28520087594365295)),
}


class TransferConfig(CN):
    """The root of the transfer config: freezing it resolves DATA.NORM_STATS into DATA.MEAN / DATA.STD. Its
    sections stay plain yacs nodes (yaml merging compares node types)."""

    @classmethod
    def _decode_cfg_value(cls, value):
        return CN._decode_cfg_value(value)

    def freeze(self):
        if "DATA" in self and self.DATA.get("NORM_STATS"):
            mean, std = norm_stats(self)
            self.defrost()
            self.DATA.MEAN, self.DATA.STD = list(mean), list(std)
        super().freeze()


def get_config():
    c = TransferConfig()
    c.update(get_default_config())      # the sections stay plain nodes, as yaml merging expects
    c.MODEL.METHOD = "transfer"
    c.MODEL.TYPE = "transfer"
    c.MODEL.NAME = "inception_v4"
    c.DATA.NORM_STATS = ""
    c.TRANSFER = CN()
    c.TRANSFER.NEW_LAYERS = 1
    c.TRANSFER.NUM_LOWLRS = -1
    c.TRANSFER.LRS = []
    c.TRANSFER.CROP_PADDING = 0
    c.TRANSFER.L2SP = CN()
    c.TRANSFER.L2SP.ENABLE = False
    c.TRANSFER.L2SP.MODE = "paper"
    c.TRANSFER.L2SP.ALPHA = 0.02       # the reference's effective rate on its low blocks (0.004 x 5)
    c.TRANSFER.L2SP.ALPHA_HIGH = -1.0
    c.TRANSFER.L2SP.BETA = 5e-4        # the reference's rate towards zero
    return c


def norm_stats(config):
    """(mean, std) used by the transforms: DATA.NORM_STATS by name, or DATA.MEAN / DATA.STD when it is ''."""
    name = config.DATA.NORM_STATS
    if not name:
        return tuple(config.DATA.MEAN), tuple(config.DATA.STD)
    if name not in NORM_STATS:
        raise ConfigError(f"DATA.NORM_STATS '{name}' is not one of {', '.join(NORM_STATS)} (or '' for DATA.MEAN/STD)")
    return NORM_STATS[name]


def with_norm_stats(config):
    """A copy of `config` whose DATA.MEAN / DATA.STD are the statistics in use."""
    mean, std = norm_stats(config)
    c = config.clone()
    c.defrost()
    c.DATA.MEAN, c.DATA.STD = list(mean), list(std)
    c.freeze()
    return c


def check_transfer_config(config):
    """Cross-field checks of the TRANSFER keys that do not need the model (bounds that do are checked there)."""
    t = config.TRANSFER
    errors = []
    if t.NUM_LOWLRS >= 0 and len(t.LRS) != 3:
        errors.append(f"TRANSFER.NUM_LOWLRS {t.NUM_LOWLRS} needs TRANSFER.LRS with 3 values "
                      f"[classifier, upper blocks, lower blocks], got {list(t.LRS)}")
    if t.LRS and t.NUM_LOWLRS < 0:
        errors.append("TRANSFER.LRS is set but TRANSFER.NUM_LOWLRS is -1 (one rate); set NUM_LOWLRS >= 0 "
                      "(0: no lower group) or leave LRS empty")
    if t.LRS and config.TRAIN.BASE_LR <= 0:
        errors.append("TRANSFER.LRS needs TRAIN.BASE_LR > 0 (group rates are multiples of its schedule)")
    if any(lr < 0 for lr in t.LRS):
        errors.append(f"TRANSFER.LRS must not be negative: {list(t.LRS)}")
    if t.L2SP.MODE not in ("paper", "reference"):
        errors.append(f"TRANSFER.L2SP.MODE '{t.L2SP.MODE}' is not 'paper' or 'reference'")
    if t.CROP_PADDING < 0:
        errors.append("TRANSFER.CROP_PADDING must be >= 0")
    if t.CROP_PADDING and config.AUG.TRAIN_RESIZE <= 0:
        errors.append("TRANSFER.CROP_PADDING applies to the resize + random crop pipeline (AUG.TRAIN_RESIZE > 0)")
    norm_stats(config)
    if errors:
        raise ConfigError("invalid transfer config: " + "; ".join(errors))
