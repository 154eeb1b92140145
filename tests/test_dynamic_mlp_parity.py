"""Dynamic MLP porting and parity with the official PyTorch code (ylingfeng/DynamicMLP).

Fixtures (tests/fixtures/dynamic_mlp/, made by make_fixtures.py with the reference): seeded weights (recipe + seeds +
the reference's key names and shapes), an image batch and a metadata batch whose last row is missing (all zeros),
and the reference's pooled feature, location feature, fused feature and logits, for ResNet-50 and SK-Res2Net-101,
image-only and Dynamic MLP A / B / C. Weights go through the porting rules (the CLI for the C models), outputs are
compared as max|ours - ref| / max|ref| < 1e-5 in float32 eval mode. BatchNorm statistics and the SK gates' alpha
are randomised by the recipe. The SK-Res2Net runs at 72 px so that stages 3 and 4 have odd sizes (9, 5, 3) and both
of its average pools (padding counted in the block, ceil mode without padding in the shortcut) matter.

Live comparison (all models, and `python -m common.port --verify`): only when torch is installed and
DYNAMIC_MLP_REF points at a checkout of the official code (it is not on PyPI).
"""
import functools
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from common.port import main as port_main
from common.porting import (PortError, Transpose, fingerprint, port_state_dict, seeded_input, seeded_state,
                            write_safetensors)
from common.safe_pickle import load_paddle_file
from dynamic_mlp.model import create_model, image_forward_parts
from dynamic_mlp.port_weights import OFFICIAL_RULES, PORT_SPECS, REFERENCE_ENV, paddle_key_to_torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "fixtures", "dynamic_mlp")
TOL = 1e-5
BACKBONES = ("resnet50", "sk2res2net101")
VARIANTS = (None, "a", "b", "c")


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _shapes(z, prefix):
    keys = str(z[f"{prefix}_keys"]).split("\n")
    return {k: tuple(int(d) for d in row if d >= 0) for k, row in zip(keys, z[f"{prefix}_shapes"])}


def _dtypes(shapes):
    return {k: "int64" if k.endswith("num_batches_tracked") else "float32" for k in shapes}


class Fixture:
    """One backbone's fixture: the reference-named weights of every variant, rebuilt from the recipe."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.z = dict(np.load(os.path.join(FIXTURES, f"{backbone}_parity.npz")))
        z = self.z
        body = _shapes(z, "backbone")
        self.body = seeded_state(body, int(z["backbone_seed"]), _dtypes(body))
        self.x = seeded_input(tuple(z["input_shape"]), int(z["input_seed"]))
        if not np.allclose(fingerprint(self.body), z["backbone_fingerprint"], rtol=1e-9) or \
                not np.allclose(fingerprint([self.x]), z["input_fingerprint"], rtol=1e-9):
            pytest.fail("numpy's RandomState no longer reproduces the fixture's weights/input; regenerate with "
                        "tests/fixtures/dynamic_mlp/make_fixtures.py (this is not a porting error)")
        self.heads = {}
        for v in VARIANTS[1:]:
            shapes = _shapes(z, v)
            self.heads[v] = seeded_state(shapes, int(z["head_seed"]), _dtypes(shapes))
            assert np.allclose(fingerprint(self.heads[v]), z[f"{v}_fingerprint"], rtol=1e-9)
        self.loc = z["loc_input"]
        self.num_classes = int(z["num_classes"])

    def name(self, variant):
        return f"{self.backbone}_image_only" if variant is None else f"{self.backbone}_dynamic_mlp_{variant}"

    def source(self, variant):
        return {**self.body, **(self.heads[variant] if variant else {})}

    def expected(self, variant):
        z = self.z
        if variant is None:
            return {"pooled": z["pooled"], "logits": z["image_only_logits"]}
        return {"pooled": z["pooled"], "loc": z[f"{variant}_loc"], "fused": z[f"{variant}_fused"],
                "logits": z[f"{variant}_logits"]}

    def run(self, variant, state, model=None):
        model = model or create_model(self.name(variant), num_classes=self.num_classes)
        missing, unexpected = model.set_state_dict(state)
        assert not missing and not unexpected, (missing, unexpected)
        model.eval()
        with paddle.no_grad():
            x = paddle.to_tensor(self.x)
            out = image_forward_parts(model, x) if variant is None else model.forward_parts(
                x, paddle.to_tensor(self.loc))
        return {k: v.numpy() for k, v in out.items()}

    def compare(self, variant, out):
        ref = self.expected(variant)
        diffs = {k: rel(out[k], ref[k]) for k in ref}
        if variant is not None:  # the fusion's own contribution, which the pooled feature could otherwise hide
            diffs["fused-pooled"] = rel(out["fused"] - out["pooled"], ref["fused"] - ref["pooled"])
        return diffs


load_fixture = functools.lru_cache(maxsize=None)(Fixture)


@pytest.fixture(scope="module", params=BACKBONES)
def fixture(request):
    return load_fixture(request.param)


def _port(fx, variant, rules=OFFICIAL_RULES, num_classes=None):
    model = create_model(fx.name(variant), num_classes=num_classes or fx.num_classes)
    ported, _ = port_state_dict(fx.source(variant), {k: tuple(v.shape) for k, v in model.state_dict().items()},
                                rules)
    return ported, model


# --------------------------------------------------------------------------------------------------------------
# Without torch

def test_parity_all_variants(fixture, tmp_path):
    """ResNet-50 + C through the porting CLI (an official-style `module.`-prefixed file), the others through the
    same rules in memory (the spec's detected flavour)."""
    fx = fixture
    assert np.abs(fx.loc[:-1]).min() > 0 and not fx.loc[-1].any()  # real metadata + one missing row
    report = {}
    for variant in VARIANTS:
        name = fx.name(variant)
        flavour = PORT_SPECS[name].detect_flavour(fx.source(variant).keys())
        assert flavour.name == "official"
        if variant == "c" and fx.backbone == "resnet50":  # (the SK-Res2Net file would be 200 MB)
            src, dst = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.pdparams"
            write_safetensors(str(src), {f"module.{k}": v for k, v in fx.source(variant).items()})
            assert port_main(["--model", name, "--num-classes", str(fx.num_classes), "--src", str(src),
                              "--dst", str(dst)]) == 0
            state = load_paddle_file(str(dst))
        else:
            state, _ = _port(fx, variant, flavour.rules)
        diffs = fx.compare(variant, fx.run(variant, state))
        report[name] = diffs
        assert max(diffs.values()) < TOL, (name, diffs)
    assert fx.z["image_only_logits"].std() > 0.5 and fx.z["c_logits"].std() > 0.5
    print("\n" + "\n".join(f"{n}: " + ", ".join(f"{k} {v:.1e}" for k, v in d.items()) for n, d in report.items()))


def test_wrong_mappings_break_parity():
    """Square Linear weights pass every shape check untransposed; a counted-padding pool read as "exclusive" shifts
    every odd-sized stage; both must show in the outputs."""
    fx = load_fixture("resnet50")
    rules = [r for r in OFFICIAL_RULES if not isinstance(r, Transpose)] + \
        [Transpose(r"(fc|loc_att\..*|loc_net\.feats\.0)\.weight", ndim=2)]  # misses w1 / w2 / class_emb
    state, _ = _port(fx, "c", rules)
    assert rel(fx.run("c", state)["loc"], fx.expected("c")["loc"]) > 1e-2
    good, _ = _port(fx, "c")
    swapped = dict(good)
    swapped["loc_att.conv2.1.dynamic_conv.conv11.conv.0.bias"] = good["loc_att.conv2.1.dynamic_conv.conv12.bias"]
    swapped["loc_att.conv2.1.dynamic_conv.conv12.bias"] = good["loc_att.conv2.1.dynamic_conv.conv11.conv.0.bias"]
    out = fx.run("c", swapped)
    assert rel(out["fused"] - out["pooled"], fx.expected("c")["fused"] - fx.expected("c")["pooled"]) > 1e-3

    sk = load_fixture("sk2res2net101")
    state, model = _port(sk, None)
    for layer in model.sublayers():
        if getattr(layer, "pool", None) is not None:
            layer.pool = nn.AvgPool2D(3, stride=2, padding=1, exclusive=True)
    assert rel(sk.run(None, state, model)["logits"], sk.expected(None)["logits"]) > 1e-3


def test_port_is_strict(fixture):
    fx = fixture
    shapes = {k: tuple(v.shape) for k, v in create_model(fx.name("c"), num_classes=fx.num_classes)
              .state_dict().items()}
    with pytest.raises(PortError, match=r"target keys not filled .*'loc_att\.conv1\.weight'"):
        port_state_dict(fx.source(None), shapes, OFFICIAL_RULES)  # an image-only checkpoint for a dynamic model
    with pytest.raises(PortError, match=r"get_weight"):
        port_state_dict(fx.source("a"), shapes, OFFICIAL_RULES)  # variant A weights for a C model
    image_only = {k: tuple(v.shape) for k, v in create_model(fx.name(None), num_classes=fx.num_classes)
                  .state_dict().items()}
    with pytest.raises(PortError, match=r"source keys with no target .*'loc_net\.feats\.0\.weight'"):
        port_state_dict(fx.source("c"), image_only, OFFICIAL_RULES)
    geo_only = {k: tuple(v.shape) for k, v in create_model(fx.name("c"), num_classes=fx.num_classes,
                                                            metadata="geo").state_dict().items()}
    with pytest.raises(PortError, match=r"shape mismatch: source 'loc_net\.feats\.0\.weight' \(256, 6\)"):
        port_state_dict(fx.source("c"), geo_only, OFFICIAL_RULES)  # 6 metadata inputs into a 4-input encoder


def test_imagenet_backbone_init_and_paddle_roundtrip(tmp_path):
    """ImageNet-style weights (backbone + 1000-class fc, no metadata branch) port with the head left to the model,
    load through -pretrained with a new head, and a .pdparams ports back unchanged (the `paddle` layout)."""
    fx = load_fixture("resnet50")
    imagenet = dict(fx.body)
    imagenet["fc.weight"] = np.zeros((1000, 2048), np.float32)
    imagenet["fc.bias"] = np.zeros((1000,), np.float32)
    src, dst = tmp_path / "r50_imagenet.safetensors", tmp_path / "init.pdparams"
    write_safetensors(str(src), imagenet)
    name = "resnet50_dynamic_mlp_c"
    assert port_main(["--model", name, "--num-classes", "10", "--src", str(src), "--dst", str(dst)]) == 1
    assert port_main(["--model", name, "--num-classes", "10", "--src", str(src), "--dst", str(dst),
                      "--allow-missing", "fc", "--allow-missing", "loc_net", "--allow-missing", "loc_att"]) == 0
    from common.checkpoint import load_pretrained
    model = create_model(name, num_classes=10)
    head_before = model.state_dict()["loc_att.conv3.weight"].numpy().copy()
    skipped = load_pretrained(model, str(dst), new_head=True, log=lambda *_: None)
    assert "fc.weight" in skipped and "loc_att.conv3.weight" in skipped
    np.testing.assert_array_equal(model.state_dict()["loc_att.conv3.weight"].numpy(), head_before)
    np.testing.assert_array_equal(model.state_dict()["layer4.2.bn3._variance"].numpy(),
                                  imagenet["layer4.2.bn3.running_var"])
    # our own .pdparams in, the same tensors out
    full_src, first, second = tmp_path / "c.safetensors", tmp_path / "a.pdparams", tmp_path / "b.pdparams"
    write_safetensors(str(full_src), fx.source("c"))
    assert port_main(["--model", name, "--num-classes", "10", "--src", str(full_src), "--dst", str(first)]) == 0
    assert port_main(["--model", name, "--num-classes", "10", "--src", str(first), "--dst", str(second)]) == 0
    a, b = load_paddle_file(str(first)), load_paddle_file(str(second))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    k, v = paddle_key_to_torch("loc_net.class_emb.weight", a["loc_net.class_emb.weight"])
    np.testing.assert_array_equal(v, fx.source("c")[k])


def test_port_cli_lists_the_models():
    proc = subprocess.run([sys.executable, "-m", "common.port", "--list"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("resnet50_image_only", "resnet50_dynamic_mlp_a", "resnet50_dynamic_mlp_b", "resnet50_dynamic_mlp_c",
                 "sk2res2net101_image_only", "sk2res2net101_dynamic_mlp_c"):
        assert name in proc.stdout and "dynamic_mlp.port_weights" in proc.stdout


# --------------------------------------------------------------------------------------------------------------
# Live, against the official code (torch + DYNAMIC_MLP_REF)

def _live_reference():
    torch = pytest.importorskip("torch")
    if not os.environ.get(REFERENCE_ENV):
        pytest.skip(f"set {REFERENCE_ENV} to a checkout of github.com/ylingfeng/DynamicMLP (not on PyPI)")
    return torch


@pytest.mark.parametrize("backbone", BACKBONES)
def test_live_parity_all_variants(backbone):
    torch = _live_reference()
    from dynamic_mlp.port_weights import build_reference, verify_metadata
    x = seeded_input((3, 3, 72, 72), seed=5)
    loc = verify_metadata(3)[0]
    for i, variant in enumerate(VARIANTS):
        name = f"{backbone}_image_only" if variant is None else f"{backbone}_dynamic_mlp_{variant}"
        ref = build_reference(name, num_classes=7)
        sd = ref.state_dict()
        src = seeded_state({k: tuple(v.shape) for k, v in sd.items()}, seed=40 + i,
                           dtypes={k: str(v.dtype).replace("torch.", "") for k, v in sd.items()})
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in src.items()})
        ref.eval()
        model = create_model(name, num_classes=7)
        ported, _ = port_state_dict(src, {k: tuple(v.shape) for k, v in model.state_dict().items()}, OFFICIAL_RULES)
        model.set_state_dict(ported)
        model.eval()
        with torch.no_grad():
            want = ref(torch.from_numpy(x)) if variant is None else ref(torch.from_numpy(x), torch.from_numpy(loc))
        with paddle.no_grad():
            got = model(paddle.to_tensor(x)) if variant is None else model(paddle.to_tensor(x), paddle.to_tensor(loc))
        r = rel(got.numpy(), want.numpy())
        print(f"\nlive {name}: relative {r:.2e}")
        assert r < TOL, (name, r)


def test_live_verify_through_cli(tmp_path):
    torch = _live_reference()
    from dynamic_mlp.port_weights import build_reference
    name = "resnet50_dynamic_mlp_c"
    sd = build_reference(name, num_classes=10).state_dict()
    src = seeded_state({k: tuple(v.shape) for k, v in sd.items()}, seed=9,
                       dtypes={k: str(v.dtype).replace("torch.", "") for k, v in sd.items()})
    ckpt = tmp_path / "official.pth"  # the authors' layout: {'epoch', 'model' (module.-prefixed), 'optimizer'}
    torch.save({"epoch": 90, "model": {f"module.{k}": torch.from_numpy(v) for k, v in src.items()},
                "optimizer": {"state": {}, "param_groups": []}}, str(ckpt))
    proc = subprocess.run([sys.executable, "-m", "common.port", "--model", name, "--num-classes", "10", "--src",
                           str(ckpt), "--dst", str(tmp_path / "out.pdparams"), "--verify"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stripped prefix module." in proc.stdout and "-> OK" in proc.stdout
