"""RandAugment and AutoAugment for PIL images, configured by timm-style policy strings.

Policy strings
--------------
``rand[-<key><value>]...`` builds RandAugment. Keys (any order):

    m     magnitude, 0..10 on the usual scale (default 10)
    n     number of ops applied per image (default 2)
    mstd  std of Gaussian noise added to the magnitude per op call (default 0); > 100 means uniform in [0, m]
    mmax  upper clip for the (noisy) magnitude (default 10)
    inc   1: use the "increasing" op variants whose strength grows with the magnitude (default 0)
    p     probability of applying each chosen op (default 0.5)
    w     index of an op-choice weight table (only 0 exists); ops are then drawn without replacement

e.g. ``rand-m9-mstd0.5-inc1`` (DeiT / PaddleViT default), ``rand-m9-n2-mstd0.5``, ``rand-mstd1-w0``.

``original``, ``originalr``, ``v0``, ``v0r`` (optionally followed by ``-mstd<value>``) build AutoAugment with the
published ImageNet sub-policies; the ``r`` variants use the posterize op whose strength increases with magnitude.

Malformed strings raise ``ValueError`` naming the string (timm silently ignores some malformed sections).

hparams
-------
``translate_const`` (pixels at magnitude 10 for absolute translations), ``translate_pct`` (fraction of the image side
at magnitude 10 for relative translations, default 0.45), ``img_mean`` (fill colour for geometric ops, tuple of
ints), ``interpolation`` (a name such as 'bicubic', a PIL constant, a tuple to draw from per call, or 'random' for
bilinear/bicubic; default random), ``magnitude_std`` / ``magnitude_max`` (overridden by the string's mstd/mmax).

Randomness comes only from the global ``random`` and ``numpy.random`` generators, which the data set reseeds per
sample, so augmented images are reproducible. The draws are made in the same order as timm's implementation, so
with equal seeds the two produce the same images.
"""
import random
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = ["AugmentOp", "OP_NAMES", "RandAugment", "AutoAugment", "rand_augment_transform", "auto_augment_transform",
           "build_policy", "RAND_OPS", "RAND_OPS_INCREASING", "AUTO_POLICY_NAMES"]

MAX_LEVEL = 10.0
DEFAULT_FILL = (128, 128, 128)
DEFAULT_HPARAMS = {"translate_const": 250, "img_mean": DEFAULT_FILL}

_RESAMPLE = Image.Resampling
_RANDOM_RESAMPLE = (_RESAMPLE.BILINEAR, _RESAMPLE.BICUBIC)
_RESAMPLE_BY_NAME = {"nearest": _RESAMPLE.NEAREST, "bilinear": _RESAMPLE.BILINEAR, "bicubic": _RESAMPLE.BICUBIC,
                     "lanczos": _RESAMPLE.LANCZOS, "random": _RANDOM_RESAMPLE}


def _resample_spec(value):
    """hparams['interpolation'] -> a PIL resample constant or a tuple of them (one is drawn per call)."""
    if value is None:
        return _RANDOM_RESAMPLE
    if isinstance(value, str):
        try:
            return _RESAMPLE_BY_NAME[value.lower()]
        except KeyError:
            raise ValueError(f"unknown interpolation '{value}' for augmentation; use one of "
                             f"{', '.join(_RESAMPLE_BY_NAME)}") from None
    if isinstance(value, (list, tuple)):
        return tuple(_resample_spec(v) for v in value)
    return value


class _Geometry:
    """Fill colour and resampling filter of the geometric ops."""

    def __init__(self, fill, resample):
        self.fill = tuple(int(v) for v in fill)
        self.resample = resample

    def kwargs(self, img):
        # a tuple means "pick one per call"; drawn here, after the level arguments, as timm does
        resample = random.choice(self.resample) if isinstance(self.resample, tuple) else self.resample
        bands = len(img.getbands())
        fill = self.fill if bands == len(self.fill) else (self.fill[0] if bands == 1 else self.fill[:bands])
        return {"resample": resample, "fillcolor": fill}


# ---------------------------------------------------------------- image operations: (img, value, geometry) -> img

def _autocontrast(img, _value, _geo):
    return ImageOps.autocontrast(img)


def _equalize(img, _value, _geo):
    return ImageOps.equalize(img)


def _invert(img, _value, _geo):
    return ImageOps.invert(img)


def _posterize(img, bits, _geo):
    """Keep the `bits` most significant bits of every value; 0 bits gives black (newer PIL refuses 0)."""
    bits = int(bits)
    if bits >= 8:
        return img
    keep = (0xFF << (8 - max(bits, 0))) & 0xFF
    if img.mode not in ("L", "RGB"):
        return img
    return img.point([v & keep for v in range(256)] * len(img.getbands()))


def _solarize(img, threshold, _geo):
    return ImageOps.solarize(img, threshold)


def _solarize_add(img, amount, _geo, threshold=128):
    """Add `amount` to every value below `threshold` (saturating at 255); brighter values stay."""
    if img.mode not in ("L", "RGB"):
        return img
    table = [min(255, v + amount) if v < threshold else v for v in range(256)]
    return img.point(table * len(img.getbands()))


# factor 1 keeps the image; 0 gives the degenerate image (grey / flat mean / black / smoothed)
def _color(img, factor, _geo):
    return ImageEnhance.Color(img).enhance(factor)


def _contrast(img, factor, _geo):
    return ImageEnhance.Contrast(img).enhance(factor)


def _brightness(img, factor, _geo):
    return ImageEnhance.Brightness(img).enhance(factor)


def _sharpness(img, factor, _geo):
    return ImageEnhance.Sharpness(img).enhance(factor)


def _affine(img, coeffs, geo):
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, **geo.kwargs(img))


def _rotate(img, degrees, geo):
    return img.rotate(degrees, **geo.kwargs(img))


def _shear_x(img, factor, geo):
    return _affine(img, (1, factor, 0, 0, 1, 0), geo)


def _shear_y(img, factor, geo):
    return _affine(img, (1, 0, 0, factor, 1, 0), geo)


def _translate_x(img, pixels, geo):
    return _affine(img, (1, 0, pixels, 0, 1, 0), geo)


def _translate_y(img, pixels, geo):
    return _affine(img, (1, 0, 0, 0, 1, pixels), geo)


def _translate_x_rel(img, fraction, geo):
    return _translate_x(img, fraction * img.size[0], geo)


def _translate_y_rel(img, fraction, geo):
    return _translate_y(img, fraction * img.size[1], geo)


# ---------------------------------------------------------------- magnitude (0..10) -> op argument

def _signed(value):
    """Negate with probability 1/2 (one draw from `random`)."""
    return -value if random.random() > 0.5 else value


def _frac(m):
    return m / MAX_LEVEL


def _arg_rotate(m, _hp):
    return _signed(30.0 * _frac(m))  # degrees in [-30, 30]


def _arg_shear(m, _hp):
    return _signed(0.3 * _frac(m))


def _arg_translate_abs(m, hp):
    return _signed(float(hp["translate_const"]) * _frac(m))


def _arg_translate_rel(m, hp):
    return _signed(hp.get("translate_pct", 0.45) * _frac(m))


def _arg_enhance(m, _hp):
    return 0.1 + 1.8 * _frac(m)  # factor in [0.1, 1.9]; 1.0 (identity) sits near m=5


def _arg_enhance_increasing(m, _hp):
    return max(0.1, 1.0 + _signed(0.9 * _frac(m)))  # identity at m=0, stronger either way as m grows


def _arg_posterize(m, _hp):
    return int(4 * _frac(m))  # bits kept, 0..4: fewer bits (stronger) at low magnitude


def _arg_posterize_increasing(m, hp):
    return 4 - _arg_posterize(m, hp)  # bits kept 4..0: stronger at high magnitude


def _arg_posterize_original(m, hp):
    return _arg_posterize(m, hp) + 4  # bits kept 4..8 as in the AutoAugment paper


def _arg_solarize(m, _hp):
    return min(256, int(256 * _frac(m)))  # threshold: low magnitude inverts more


def _arg_solarize_increasing(m, hp):
    return 256 - _arg_solarize(m, hp)


def _arg_solarize_add(m, _hp):
    return min(128, int(110 * _frac(m)))


# name -> (image operation, magnitude mapping or None)
_OPS = {
    "AutoContrast": (_autocontrast, None),
    "Equalize": (_equalize, None),
    "Invert": (_invert, None),
    "Rotate": (_rotate, _arg_rotate),
    "Posterize": (_posterize, _arg_posterize),
    "PosterizeIncreasing": (_posterize, _arg_posterize_increasing),
    "PosterizeOriginal": (_posterize, _arg_posterize_original),
    "Solarize": (_solarize, _arg_solarize),
    "SolarizeIncreasing": (_solarize, _arg_solarize_increasing),
    "SolarizeAdd": (_solarize_add, _arg_solarize_add),
    "Color": (_color, _arg_enhance),
    "ColorIncreasing": (_color, _arg_enhance_increasing),
    "Contrast": (_contrast, _arg_enhance),
    "ContrastIncreasing": (_contrast, _arg_enhance_increasing),
    "Brightness": (_brightness, _arg_enhance),
    "BrightnessIncreasing": (_brightness, _arg_enhance_increasing),
    "Sharpness": (_sharpness, _arg_enhance),
    "SharpnessIncreasing": (_sharpness, _arg_enhance_increasing),
    "ShearX": (_shear_x, _arg_shear),
    "ShearY": (_shear_y, _arg_shear),
    "TranslateX": (_translate_x, _arg_translate_abs),
    "TranslateY": (_translate_y, _arg_translate_abs),
    "TranslateXRel": (_translate_x_rel, _arg_translate_rel),
    "TranslateYRel": (_translate_y_rel, _arg_translate_rel),
}

OP_NAMES = tuple(_OPS)

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_HAS_INCREASING = {"Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"}
RAND_OPS_INCREASING = tuple(n + "Increasing" if n in _HAS_INCREASING else n for n in RAND_OPS)

# choice weights for 'w0', position-aligned with RAND_OPS (and RAND_OPS_INCREASING)
_CHOICE_WEIGHTS = {
    0: (0.025, 0.005, 0.0, 0.3, 0.0, 0.005, 0.005, 0.025, 0.005, 0.005, 0.025, 0.2, 0.2, 0.1, 0.1),
}


class AugmentOp:
    """One named op applied with probability `prob` at `magnitude` (optionally noisy, see module doc)."""

    def __init__(self, name, prob=0.5, magnitude=10, hparams=None):
        if name not in _OPS:
            raise ValueError(f"unknown augmentation op '{name}'; known: {', '.join(OP_NAMES)}")
        hp = dict(DEFAULT_HPARAMS)
        hp.update(hparams or {})
        self.name = name
        self.image_fn, self.level_fn = _OPS[name]
        self.prob = float(prob)
        self.magnitude = float(magnitude)
        self.hparams = hp
        self.magnitude_std = float(hp.get("magnitude_std", 0.0) or 0.0)
        self.magnitude_max = hp.get("magnitude_max")
        self.geometry = _Geometry(hp.get("img_mean", DEFAULT_FILL), _resample_spec(hp.get("interpolation")))

    def sample_magnitude(self):
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = random.uniform(0.0, m)
        elif self.magnitude_std > 0:
            m = random.gauss(m, self.magnitude_std)
        upper = self.magnitude_max if self.magnitude_max else MAX_LEVEL
        return min(max(m, 0.0), upper)

    def __call__(self, img):
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        m = self.sample_magnitude()
        value = self.level_fn(m, self.hparams) if self.level_fn is not None else None
        return self.image_fn(img, value, self.geometry)

    def __repr__(self):
        extra = f", mmax={self.magnitude_max}" if self.magnitude_max else ""
        return f"AugmentOp({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std}{extra})"


class RandAugment:
    """Apply `num_layers` ops drawn from `ops` (uniformly with replacement, or by `choice_weights` without)."""

    def __init__(self, ops, num_layers=2, choice_weights=None):
        self.ops = list(ops)
        self.num_layers = int(num_layers)
        self.choice_weights = None
        if choice_weights is not None:
            w = np.asarray(choice_weights, dtype="float64")
            if w.shape != (len(self.ops),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError("choice_weights must be one non-negative weight per op, not all zero")
            if self.num_layers > int((w > 0).sum()):
                raise ValueError(f"cannot draw {self.num_layers} distinct ops from {int((w > 0).sum())} "
                                 f"with non-zero weight")
            self.choice_weights = w / w.sum()

    def __call__(self, img):
        picks = np.random.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                                 p=self.choice_weights)
        for i in picks:
            img = self.ops[i](img)
        return img

    def __repr__(self):
        return f"RandAugment(n={self.num_layers}, ops=[" + ", ".join(map(repr, self.ops)) + "])"


class AutoAugment:
    """Apply one sub-policy (a short list of ops) drawn uniformly per image."""

    def __init__(self, policy):
        self.policy = [list(sub) for sub in policy]

    def __call__(self, img):
        for op in random.choice(self.policy):
            img = op(img)
        return img

    def __repr__(self):
        return f"AutoAugment({len(self.policy)} sub-policies)"


# ---------------------------------------------------------------- AutoAugment ImageNet policies (published tables)
# each sub-policy: "Op:prob:magnitude Op:prob:magnitude"

_POLICY_ORIGINAL = """
PosterizeOriginal:0.4:8 Rotate:0.6:9 | Solarize:0.6:5 AutoContrast:0.6:5 | Equalize:0.8:8 Equalize:0.6:3
PosterizeOriginal:0.6:7 PosterizeOriginal:0.6:6 | Equalize:0.4:7 Solarize:0.2:4 | Equalize:0.4:4 Rotate:0.8:8
Solarize:0.6:3 Equalize:0.6:7 | PosterizeOriginal:0.8:5 Equalize:1.0:2 | Rotate:0.2:3 Solarize:0.6:8
Equalize:0.6:8 PosterizeOriginal:0.4:6 | Rotate:0.8:8 Color:0.4:0 | Rotate:0.4:9 Equalize:0.6:2
Equalize:0.0:7 Equalize:0.8:8 | Invert:0.6:4 Equalize:1.0:8 | Color:0.6:4 Contrast:1.0:8
Rotate:0.8:8 Color:1.0:2 | Color:0.8:8 Solarize:0.8:7 | Sharpness:0.4:7 Invert:0.6:8
ShearX:0.6:5 Equalize:1.0:9 | Color:0.4:0 Equalize:0.6:3 | Equalize:0.4:7 Solarize:0.2:4
Solarize:0.6:5 AutoContrast:0.6:5 | Invert:0.6:4 Equalize:1.0:8 | Color:0.6:4 Contrast:1.0:8
Equalize:0.8:8 Equalize:0.6:3
"""

_POLICY_V0 = """
Equalize:0.8:1 ShearY:0.8:4 | Color:0.4:9 Equalize:0.6:3 | Color:0.4:1 Rotate:0.6:8
Solarize:0.8:3 Equalize:0.4:7 | Solarize:0.4:2 Solarize:0.6:2 | Color:0.2:0 Equalize:0.8:8
Equalize:0.4:8 SolarizeAdd:0.8:3 | ShearX:0.2:9 Rotate:0.6:8 | Color:0.6:1 Equalize:1.0:2
Invert:0.4:9 Rotate:0.6:0 | Equalize:1.0:9 ShearY:0.6:3 | Color:0.4:7 Equalize:0.6:0
Posterize:0.4:6 AutoContrast:0.4:7 | Solarize:0.6:8 Color:0.6:9 | Solarize:0.2:4 Rotate:0.8:9
Rotate:1.0:7 TranslateYRel:0.8:9 | ShearX:0.0:0 Solarize:0.8:4 | ShearY:0.8:0 Color:0.6:4
Color:1.0:0 Rotate:0.6:2 | Equalize:0.8:4 Equalize:0.0:8 | Equalize:1.0:4 AutoContrast:0.6:2
ShearY:0.4:7 SolarizeAdd:0.6:7 | Posterize:0.8:2 Solarize:0.6:10 | Solarize:0.6:8 Equalize:0.6:1
Color:0.8:6 Rotate:0.4:5
"""


def _parse_policy_table(text, posterize_as=None):
    table = []
    for sub in re.split(r"[|\n]", text):
        if not sub.strip():
            continue
        ops = []
        for item in sub.split():
            name, prob, mag = item.split(":")
            if posterize_as and name.startswith("Posterize"):
                name = posterize_as
            ops.append((name, float(prob), int(mag)))
        table.append(ops)
    return table


_AUTO_POLICIES = {
    "original": lambda: _parse_policy_table(_POLICY_ORIGINAL),
    "originalr": lambda: _parse_policy_table(_POLICY_ORIGINAL, posterize_as="PosterizeIncreasing"),
    "v0": lambda: _parse_policy_table(_POLICY_V0),
    "v0r": lambda: _parse_policy_table(_POLICY_V0, posterize_as="PosterizeIncreasing"),
}
AUTO_POLICY_NAMES = tuple(_AUTO_POLICIES)


# ---------------------------------------------------------------- config-string parsing

_SECTION = re.compile(r"([a-z]+)(\d.*)")


def _parse_sections(config_str, sections, converters):
    """['m9', 'mstd0.5', ...] -> {'m': 9.0, ...}; anything unexpected raises ValueError naming `config_str`."""
    out = {}
    for sec in sections:
        match = _SECTION.fullmatch(sec)
        if match is None:
            raise ValueError(f"malformed augmentation policy '{config_str}': section '{sec}' is not <key><number>")
        key, raw = match.groups()
        if key not in converters:
            raise ValueError(f"malformed augmentation policy '{config_str}': unknown key '{key}' in section "
                             f"'{sec}' (known: {', '.join(converters)})")
        try:
            out[key] = converters[key](raw)
        except ValueError:
            raise ValueError(f"malformed augmentation policy '{config_str}': bad value '{raw}' for key "
                             f"'{key}'") from None
    return out


def _check_str(config_str):
    if not isinstance(config_str, str):
        raise ValueError(f"augmentation policy must be a string, got {config_str!r}")
    return config_str.strip()


def _hparams_with(hparams, **updates):
    hp = dict(DEFAULT_HPARAMS)
    hp.update(hparams or {})
    hp.update({k: v for k, v in updates.items() if v is not None})
    return hp


def rand_augment_transform(config_str, hparams=None):
    """RandAugment from a 'rand-...' string (see module doc) and optional hparams."""
    text = _check_str(config_str)
    parts = text.split("-")
    if parts[0] != "rand":
        raise ValueError(f"malformed RandAugment policy '{config_str}': it must start with 'rand'")
    opts = _parse_sections(config_str, parts[1:], {
        "m": float, "n": int, "mstd": float, "mmax": float, "inc": int, "p": float, "w": int})
    magnitude = opts.get("m", MAX_LEVEL)
    num_layers = opts.get("n", 2)
    prob = opts.get("p", 0.5)
    increasing = opts.get("inc", 0)
    mstd = opts.get("mstd")
    if mstd is not None and mstd > 100:
        mstd = float("inf")
    problems = []
    if num_layers < 0:
        problems.append("n must be >= 0")
    if not 0.0 <= prob <= 1.0:
        problems.append("p must be in [0, 1]")
    if increasing not in (0, 1):
        problems.append("inc must be 0 or 1")
    if mstd is not None and mstd < 0:
        problems.append("mstd must be >= 0")
    if "w" in opts and opts["w"] not in _CHOICE_WEIGHTS:
        problems.append(f"w must be one of {sorted(_CHOICE_WEIGHTS)}")
    if problems:
        raise ValueError(f"malformed RandAugment policy '{config_str}': " + "; ".join(problems))
    hp = _hparams_with(hparams, magnitude_std=mstd, magnitude_max=opts.get("mmax"))
    names = RAND_OPS_INCREASING if increasing else RAND_OPS
    ops = [AugmentOp(name, prob=prob, magnitude=magnitude, hparams=hp) for name in names]
    weights = _CHOICE_WEIGHTS[opts["w"]] if "w" in opts else None
    try:
        return RandAugment(ops, num_layers, choice_weights=weights)
    except ValueError as e:
        raise ValueError(f"malformed RandAugment policy '{config_str}': {e}") from None


def auto_augment_transform(config_str, hparams=None):
    """AutoAugment from 'original' / 'originalr' / 'v0' / 'v0r', optionally with '-mstd<value>'."""
    text = _check_str(config_str)
    parts = text.split("-")
    if parts[0] not in _AUTO_POLICIES:
        raise ValueError(f"unknown AutoAugment policy '{config_str}'; use one of {', '.join(AUTO_POLICY_NAMES)} "
                         f"(optionally with -mstd<value>)")
    opts = _parse_sections(config_str, parts[1:], {"mstd": float})
    if opts.get("mstd", 0.0) < 0:
        raise ValueError(f"malformed AutoAugment policy '{config_str}': mstd must be >= 0")
    hp = _hparams_with(hparams, magnitude_std=opts.get("mstd"))
    policy = [[AugmentOp(name, prob=p, magnitude=m, hparams=hp) for name, p, m in sub]
              for sub in _AUTO_POLICIES[parts[0]]()]
    return AutoAugment(policy)


def build_policy(config_str, image_size, mean=DEFAULT_FILL, interpolation=None):
    """The colour/geometry policy for training, or None for '' / 'none'.

    image_size: int or (h, w) of the network input (absolute translations use 45% of its short side).
    mean: fill colour for geometric ops, as 0..255 ints (0..1 floats are scaled).
    interpolation: resampling of geometric ops (name or PIL constant); None draws bilinear/bicubic per call.
    """
    if config_str is None:
        return None
    text = _check_str(config_str)
    if text == "" or text.lower() == "none":
        return None
    size = min(image_size) if isinstance(image_size, (list, tuple)) else int(image_size)
    fill = tuple(mean)
    if any(isinstance(v, float) for v in fill) and all(0.0 <= v <= 1.0 for v in fill):
        fill = tuple(int(round(255 * v)) for v in fill)
    hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(int(round(v)) for v in fill)}
    if interpolation is not None:
        hparams["interpolation"] = interpolation
    if text.split("-")[0] == "rand":
        return rand_augment_transform(text, hparams)
    return auto_augment_transform(text, hparams)
