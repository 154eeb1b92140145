"""RandAugment / AutoAugment policies (common/data/auto_augment.py) and RandomErasing (random_erasing.py)."""
import os
import random
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from common.data import auto_augment as aa  # noqa: E402
from common.data.random_erasing import RandomErasing  # noqa: E402

H, W = 37, 53  # non-square on purpose


def _image(seed=0, h=H, w=W):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def _arr(img):
    return np.asarray(img)


def _seed(s):
    random.seed(s)
    np.random.seed(s)


# ---------------------------------------------------------------- parsing

VALID_RAND = ["rand", "rand-m9-mstd0.5-inc1", "rand-m9-n2-mstd0.5", "rand-mstd1-w0", "rand-m10-n3-mstd101-mmax12-p0.7",
              "rand-m5-inc0-p1.0", "rand-n0"]
VALID_AUTO = ["original", "originalr", "v0", "v0r", "original-mstd0.5", "v0r-mstd1"]
INVALID = ["rand-mX", "foo", "rand-m9-", "rand-q3", "v0-m3", "rand-inc2", "rand-w1", "original-mstdx", "Rand-m9",
           "rand-m9--n2", "rand-p1.5", "rand-n20-w0", "v1", "rand-tweights"]


@pytest.mark.parametrize("cfg", VALID_RAND)
def test_valid_rand_strings_build(cfg):
    t = aa.build_policy(cfg, 224, (124, 116, 104))
    assert isinstance(t, aa.RandAugment)
    assert t(_image()).size == (W, H)


def test_rand_string_fields():
    t = aa.rand_augment_transform("rand-m7-n3-mstd0.5-mmax12-p0.8-inc1", {})
    assert t.num_layers == 3 and t.choice_weights is None
    assert [op.name for op in t.ops] == list(aa.RAND_OPS_INCREASING)
    op = t.ops[0]
    assert (op.magnitude, op.magnitude_std, op.magnitude_max, op.prob) == (7, 0.5, 12, 0.8)
    plain = aa.rand_augment_transform("rand", {})
    assert [op.name for op in plain.ops] == list(aa.RAND_OPS)
    assert plain.num_layers == 2 and plain.ops[0].magnitude == 10 and plain.ops[0].prob == 0.5
    assert aa.rand_augment_transform("rand-mstd200", {}).ops[0].magnitude_std == float("inf")
    weighted = aa.rand_augment_transform("rand-mstd1-w0", {})
    w = dict(zip(aa.RAND_OPS, weighted.choice_weights))
    assert w["Invert"] == 0 and w["Posterize"] == 0 and w["Rotate"] == max(w.values())


@pytest.mark.parametrize("cfg", VALID_AUTO)
def test_valid_auto_strings_build(cfg):
    t = aa.build_policy(cfg, (224, 160), (0.485, 0.456, 0.406))
    assert isinstance(t, aa.AutoAugment) and len(t.policy) == 25
    assert all(len(sub) == 2 for sub in t.policy)
    assert t(_image()).size == (W, H)
    if cfg.startswith("original"):
        names = {op.name for sub in t.policy for op in sub}
        assert ("PosterizeIncreasing" in names) == cfg.startswith("originalr")
        assert ("PosterizeOriginal" in names) != cfg.startswith("originalr")


@pytest.mark.parametrize("cfg", ["", "none", "None", "  ", None])
def test_disabled_policy_is_none(cfg):
    assert aa.build_policy(cfg, 224, (0, 0, 0)) is None


@pytest.mark.parametrize("cfg", INVALID)
def test_invalid_strings_raise_naming_the_string(cfg):
    with pytest.raises(ValueError, match=re.escape(f"'{cfg}'")):
        aa.build_policy(cfg, 224, (0, 0, 0))


def test_transform_specific_entry_points_reject_the_other_kind():
    with pytest.raises(ValueError, match="'original'"):
        aa.rand_augment_transform("original", {})
    with pytest.raises(ValueError, match="'rand-m9'"):
        aa.auto_augment_transform("rand-m9", {})


def test_build_policy_hparams():
    t = aa.build_policy("rand-m9", 200, (0.5, 0.25, 1.0), interpolation="bicubic")
    op = t.ops[0]
    assert op.hparams["translate_const"] == 90
    assert op.geometry.fill == (128, 64, 255)
    assert op.geometry.resample == Image.Resampling.BICUBIC
    t = aa.build_policy("v0", (300, 100), (124, 116, 104))
    op = t.policy[0][0]
    assert op.hparams["translate_const"] == 45 and op.geometry.fill == (124, 116, 104)
    assert op.geometry.resample == (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


# ---------------------------------------------------------------- single ops

@pytest.mark.parametrize("name", aa.OP_NAMES)
@pytest.mark.parametrize("magnitude", [0, 5, 10])
def test_each_op_keeps_size_and_mode(name, magnitude):
    _seed(1)
    img = _image()
    out = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams={"img_mean": (1, 2, 3)})(img)
    assert out.size == img.size and out.mode == "RGB"
    assert _arr(img).shape == _arr(out).shape


IDENTITY_AT_ZERO = ["Rotate", "BrightnessIncreasing", "ColorIncreasing", "ContrastIncreasing", "SharpnessIncreasing",
                    "SolarizeIncreasing", "SolarizeAdd", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
                    "TranslateX", "TranslateY"]


@pytest.mark.parametrize("name", IDENTITY_AT_ZERO)
def test_magnitude_zero_is_identity(name):
    img = _image(3)
    for s in range(4):  # both signs, both random interpolations
        _seed(s)
        assert np.array_equal(_arr(aa.AugmentOp(name, prob=1.0, magnitude=0)(img)), _arr(img))


def test_prob_zero_is_identity_and_strong_ops_change_the_image():
    img = _image(4)
    _seed(0)
    assert aa.AugmentOp("Rotate", prob=0.0, magnitude=10)(img) is img
    for name in ["Rotate", "Invert", "Equalize", "Solarize", "ShearX", "TranslateYRel", "Brightness"]:
        _seed(0)
        assert not np.array_equal(_arr(aa.AugmentOp(name, prob=1.0, magnitude=9)(img)), _arr(img)), name


def test_geometric_fill_uses_img_mean():
    img = Image.new("RGB", (W, H), (255, 255, 255))
    _seed(0)
    out = _arr(aa.AugmentOp("TranslateXRel", prob=1.0, magnitude=10,
                            hparams={"img_mean": (10, 20, 30), "interpolation": "nearest"})(img))
    assert (out == np.array([10, 20, 30], dtype=np.uint8)).all(axis=-1).any()


def test_posterize_zero_bits_is_black():
    # newer PIL refuses bits=0; the op keeps timm's meaning (keep no bits) instead of failing
    out = aa.AugmentOp("Posterize", prob=1.0, magnitude=0)(_image())
    assert _arr(out).max() == 0


def test_policies_reproducible_with_seeds():
    img = _image(5)
    for cfg in ["rand-m9-mstd0.5-inc1", "rand-mstd1-w0", "original-mstd0.5", "v0r"]:
        t = aa.build_policy(cfg, 224, (124, 116, 104))
        outs = []
        for s in [7, 7, 8, 9, 10]:
            _seed(s)
            outs.append(_arr(t(img)))
        assert np.array_equal(outs[0], outs[1]), cfg
        assert any(not np.array_equal(outs[0], o) for o in outs[2:]), cfg


def test_weighted_choice_draws_distinct_nonzero_ops():
    t = aa.rand_augment_transform("rand-n3-w0", {})
    seen = []
    t.ops = [(lambda i: (lambda img: (seen.append(i), img)[1]))(i) for i in range(len(t.ops))]
    _seed(0)
    for _ in range(200):
        del seen[:]
        t(None)
        assert len(seen) == 3 and len(set(seen)) == 3
        assert not {aa.RAND_OPS.index("Invert"), aa.RAND_OPS.index("Posterize")} & set(seen)


# ---------------------------------------------------------------- against timm (reference)

def _timm_aa():
    return pytest.importorskip("timm.data.auto_augment")


@pytest.mark.parametrize("name,magnitude", [("Posterize", 5), ("Posterize", 9), ("PosterizeIncreasing", 3),
                                            ("PosterizeOriginal", 6), ("Solarize", 3), ("SolarizeIncreasing", 7),
                                            ("SolarizeAdd", 6), ("Equalize", 0), ("AutoContrast", 0),
                                            ("Invert", 0), ("Color", 2), ("Contrast", 8), ("Brightness", 4),
                                            ("Sharpness", 9), ("ShearX", 6), ("ShearY", 3), ("Rotate", 7),
                                            ("TranslateXRel", 5), ("TranslateYRel", 8), ("ColorIncreasing", 6)])
def test_ops_match_timm(name, magnitude):
    ta = _timm_aa()
    hp = {"translate_const": 100, "img_mean": (124, 116, 104), "interpolation": Image.Resampling.BICUBIC}
    img = _image(6)
    for s in range(3):
        _seed(s)
        ref = _arr(ta.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=dict(hp))(img))
        _seed(s)
        ours = _arr(aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=dict(hp))(img))
        assert np.array_equal(ref, ours), (name, magnitude, s)


@pytest.mark.parametrize("cfg", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-mstd0.5", "original", "v0r-mstd0.5"])
def test_policies_match_timm_draw_for_draw(cfg):
    # same seeds -> same random draws in the same order -> the same image as timm (random interpolation included)
    ta = _timm_aa()
    hp = {"translate_const": 100, "img_mean": (124, 116, 104)}
    if cfg.startswith("rand"):
        ref_t, ours_t = ta.rand_augment_transform(cfg, dict(hp)), aa.rand_augment_transform(cfg, dict(hp))
    else:
        ref_t, ours_t = ta.auto_augment_transform(cfg, dict(hp)), aa.auto_augment_transform(cfg, dict(hp))
    img = _image(7)
    compared = 0
    for s in range(40):
        _seed(s)
        try:
            ref = _arr(ref_t(img))
        except ValueError:  # timm passes bits=0 to PIL's posterize, which newer PIL rejects
            continue
        _seed(s)
        assert np.array_equal(ref, _arr(ours_t(img))), (cfg, s)
        compared += 1
    assert compared >= 30


# ---------------------------------------------------------------- random erasing

def _normalised(n=None, c=3, h=48, w=80, seed=0):
    shape = (c, h, w) if n is None else (n, c, h, w)
    return np.random.RandomState(seed).uniform(1.0, 2.0, shape).astype("float32")


def _box_of(mask):
    rows, cols = np.where(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return y0, y1, x0, x1


def test_erasing_probability_zero_is_identity():
    x = _normalised()
    ref = x.copy()
    np.random.seed(0)
    out = RandomErasing(probability=0.0, mode="pixel")(x)
    assert out is x and np.array_equal(out, ref)


@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
def test_erasing_probability_one_writes_one_box_within_area(mode):
    min_area, max_area = 0.02, 1 / 3
    c, h, w = 3, 48, 80
    for s in range(30):
        np.random.seed(s)
        x = _normalised(c=c, h=h, w=w, seed=s)
        ref = x.copy()
        out = RandomErasing(probability=1.0, mode=mode, min_area=min_area, max_area=max_area)(x)
        assert out.shape == (c, h, w) and out.dtype == np.float32
        changed = (out != ref).any(axis=0)
        y0, y1, x0, x1 = _box_of(changed)
        bh, bw = y1 - y0, x1 - x0
        assert changed.sum() == bh * bw  # one solid rectangle
        assert bh < h and bw < w
        # the box sides are rounded from the drawn area, so allow that rounding
        slack = 0.5 * (bh + bw) + 0.25
        assert min_area * h * w - slack <= bh * bw <= max_area * h * w + slack
        region = out[:, y0:y1, x0:x1]
        if mode == "const":
            assert (region == 0).all()
        elif mode == "rand":
            assert (region == region[:, :1, :1]).all()  # one value per channel
        else:
            assert len(np.unique(region)) > region.size // 2  # per-pixel noise
        outside = np.ones((h, w), bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(out[:, outside], ref[:, outside])


def test_erasing_multiple_boxes_and_reproducible():
    re_ = RandomErasing(probability=1.0, mode="const", min_count=2, max_count=4)
    counts = set()
    for s in range(20):
        np.random.seed(s)
        boxes = re_.erase(_normalised())
        counts.add(len(boxes))
        assert 1 <= len(boxes) <= 4
    assert len(counts) > 1
    np.random.seed(3)
    a = RandomErasing(probability=0.5, mode="pixel")(_normalised(n=6))
    np.random.seed(3)
    b = RandomErasing(probability=0.5, mode="pixel")(_normalised(n=6))
    assert np.array_equal(a, b)


def test_erasing_batch_and_num_splits():
    x = _normalised(n=6)
    ref = x.copy()
    np.random.seed(0)
    out = RandomErasing(probability=1.0, mode="const")(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert all((out[i] != ref[i]).any() for i in range(6))
    x = _normalised(n=6)
    ref = x.copy()
    np.random.seed(0)
    out = RandomErasing(probability=1.0, mode="const", num_splits=2)(x)
    assert np.array_equal(out[:3], ref[:3])  # the clean split is left alone
    assert all((out[i] != ref[i]).any() for i in range(3, 6))


def test_erasing_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        RandomErasing(mode="noise")
    with pytest.raises(ValueError):
        RandomErasing(min_area=0.5, max_area=0.1)
    with pytest.raises(ValueError, match="CHW"):
        RandomErasing()(np.zeros((4, 4), "float32"))


def test_transforms_pickle_for_spawned_workers():
    import pickle
    img = _image(8)
    for obj in [aa.build_policy("rand-m9-mstd0.5-inc1", 224, (124, 116, 104)), aa.build_policy("original", 224),
                RandomErasing(probability=1.0)]:
        clone = pickle.loads(pickle.dumps(obj))
        if isinstance(obj, RandomErasing):
            continue
        _seed(2)
        a = _arr(obj(img))
        _seed(2)
        assert np.array_equal(a, _arr(clone(img)))
