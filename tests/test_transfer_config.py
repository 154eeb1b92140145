"""transfer/ configs and transforms: every recipe file loads and validates, named normalisation statistics,
the fine-grained baseline's square resize and padded crop, clear errors for inconsistent knobs."""
import glob
import os

import numpy as np
import pytest
from PIL import Image

from common.cli import build_parser, config_from_args
from common.config import ConfigError
from tests.helpers import REPO
from transfer.config import NORM_STATS, get_config
from common.data.transforms import SquareResize
from transfer.transforms import PaddedRandomCrop, eval_transform, train_transform

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "transfer", "*.yaml")))


def load(cfg_path=None, *opts):
    args = build_parser().parse_args((["-cfg", cfg_path] if cfg_path else []) + (["-opts", *opts] if opts else []))
    return config_from_args(args, get_config())


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load(path)
    name = os.path.basename(path)
    if name.startswith("inception_v4_") and "recipe" not in name:
        assert cfg.MODEL.NAME == "inception_v4" and cfg.TRAIN.BASE_LR == 0.03 and cfg.DATA.BATCH_SIZE == 32
        assert cfg.TRAIN.LR_SCHEDULER.NAME == "step" and cfg.TRAIN.LR_SCHEDULER.DECAY_RATE == 0.9
        assert cfg.AUG.MIXUP_ALPHA == 0.2 and cfg.AUG.RE_PROB == 0.5 and cfg.AMP.ENABLE
        assert cfg.DATA.DATA_PATH.startswith("data/") and cfg.MODEL.NUM_CLASSES in (100, 196, 47, 256)
    if name.startswith("resnet50_") and "recipe" not in name:
        assert cfg.MODEL.NAME == "resnet50" and cfg.TRAIN.EPOCHS == 128 and cfg.TRAIN.LINEAR_SCALED_LR == 256
        assert cfg.DATA.SQUARE_RESIZE and cfg.TRAIN.SMOOTHING_MODE == "others"


def test_norm_stats_by_name():
    img = Image.new("RGB", (40, 40), (128, 64, 200))
    for name, (mean, std) in NORM_STATS.items():
        cfg = load(None, "DATA.NORM_STATS", name, "DATA.IMAGE_SIZE", "32")
        out = eval_transform(cfg)(img)
        want = (np.array([128, 64, 200]) / 255.0 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(out[:, 16, 16], want, rtol=1e-5, atol=1e-6, err_msg=name)
    cfg = load(None, "DATA.NORM_STATS", "", "DATA.MEAN", "[0.0, 0.0, 0.0]", "DATA.STD", "[1.0, 1.0, 1.0]",
               "DATA.IMAGE_SIZE", "32")
    np.testing.assert_allclose(eval_transform(cfg)(img)[:, 0, 0], np.array([128, 64, 200]) / 255.0, rtol=1e-6)
    # resolved when the config is frozen: the saved config and every reader (export, prediction) see the values
    cfg = load(os.path.join(REPO, "configs", "transfer", "inception_v4_aircraft.yaml"))
    assert list(cfg.DATA.MEAN) == list(NORM_STATS["aircraft"][0]) and "NORM_STATS: aircraft" in cfg.dump()
    with pytest.raises(ConfigError, match="DATA.NORM_STATS 'imagenet21k' is not one of"):
        eval_transform(load(None, "DATA.NORM_STATS", "imagenet21k"))


def test_square_resize_and_padded_crop():
    wide = Image.fromarray(np.tile(np.linspace(0, 255, 60, dtype="uint8"), (20, 1))).convert("RGB")   # 60 x 20
    assert SquareResize(32)(wide).size == (32, 32)
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    crops = [np.asarray(PaddedRandomCrop(16, padding=4)(white)) for _ in range(50)]
    assert all(c.shape == (16, 16, 3) for c in crops)
    assert any((c == 0).all(axis=2).any() for c in crops)            # some crops reach into the black border
    cfg = load(os.path.join(REPO, "configs", "transfer", "resnet50_cub.yaml"), "DATA.IMAGE_SIZE", "56",
               "AUG.TRAIN_RESIZE", "64", "DATA.RESIZE_SIZE", "64")
    steps = [type(s).__name__ for s in train_transform(cfg).steps]
    assert steps[:3] == ["SquareResize", "PaddedRandomCrop", "RandomHorizontalFlip"]
    ev = eval_transform(cfg)
    assert [type(s).__name__ for s in ev.steps][:2] == ["SquareResize", "CenterCrop"]
    assert ev(wide).shape == (3, 56, 56)
    # the aspect ratio is not kept: the horizontal ramp spans the whole crop
    row = ev(wide)[0, 28]
    assert row[0] < row[-1] and (row[-1] - row[0]) > 0.8 * (row.max() - row.min())


@pytest.mark.parametrize("opts, message", [
    (["TRANSFER.NUM_LOWLRS", "4"], "needs TRANSFER.LRS with 3 values"),
    (["TRANSFER.LRS", "[0.1, 0.01, 0.001]"], "NUM_LOWLRS is -1"),
    (["TRANSFER.L2SP.MODE", "l1"], "is not 'paper' or 'reference'"),
    (["DATA.SQUARE_RESIZE", "True"], "needs AUG.TRAIN_RESIZE > 0"),
])
def test_inconsistent_knobs_are_named(opts, message):
    from transfer.method import TransferMethod
    with pytest.raises(ConfigError, match=message):
        TransferMethod().build_model(load(None, "MODEL.NAME", "resnet18", "MODEL.NUM_CLASSES", "4", *opts))
