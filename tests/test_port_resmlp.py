"""ResMLP weight porting: the CLI end to end, parity with timm (fixture without torch; live with torch + timm).

Parity: max|paddle - timm| / max|timm| on the logits must stay below 1e-5 in float32 eval mode.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import paddle  # noqa: E402

from common.port import discover_specs, main  # noqa: E402
from common.porting import (PortError, Transpose, fingerprint, port_state_dict, seeded_input,  # noqa: E402
                            seeded_state, write_safetensors)
from common.safe_pickle import load_paddle_file  # noqa: E402
from resmlp.port_weights import FB_RULES, PORT_SPECS, TIMM_RULES  # noqa: E402
from resmlp.resmlp import create_resmlp  # noqa: E402

PARITY = os.path.join(REPO, "tests", "fixtures", "porting", "resmlp_12_224_parity.npz")
TOL = 1e-5
ZOO = {  # architecture -> the zoo names that reuse it
    "resmlp_12_224": ["resmlp_12_distilled_224"],
    "resmlp_24_224": ["resmlp_24_distilled_224"],
    "resmlp_36_224": ["resmlp_36_distilled_224"],
    "resmlp_big_24_224": ["resmlp_big_24_distilled_224", "resmlp_big_24_22k_224"],
}


def rel_diff(out, ref):
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def paddle_logits(name, state, x, **overrides):
    model = create_resmlp(name, **overrides)
    missing, unexpected = model.set_state_dict(state)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def timm_to_fb(state):
    """timm ResMLP keys -> the authors' raw layout (what timm's checkpoint_filter_fn undoes)."""
    out = {}
    for k, v in state.items():
        k2 = k.replace("stem.", "patch_embed.").replace("linear_tokens.", "attn.")
        k2 = k2.replace("mlp_channels.", "mlp.").replace(".ls1", ".gamma_1").replace(".ls2", ".gamma_2")
        if k2.endswith((".alpha", ".beta")):
            v = v.reshape(-1)
        out[k2] = v
    return out


def port(*args):
    status = main([str(a) for a in args])
    assert status == 0, f"common.port {' '.join(map(str, args))} exited with {status}"


@pytest.fixture(scope="module")
def parity():
    """timm-named weights rebuilt from the committed recipe, the input, and timm's logits for them."""
    with np.load(PARITY) as z:
        keys = str(z["keys"]).split("\n")
        shapes = {k: tuple(int(d) for d in row if d >= 0) for k, row in zip(keys, z["shapes"])}
        weights = seeded_state(shapes, int(z["weight_seed"]))
        x = seeded_input(tuple(z["input_shape"]), int(z["input_seed"]))
        if not np.allclose(fingerprint(weights), z["weights_fingerprint"], rtol=1e-9) or \
                not np.allclose(fingerprint([x]), z["input_fingerprint"], rtol=1e-9):
            pytest.fail("numpy's RandomState stream no longer reproduces the fixture's weights/input; regenerate "
                        "with tests/fixtures/make_porting_fixtures.py (this is not a porting error)")
        return weights, x, z["logits"].astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Without torch

def test_parity_fixture_through_cli(tmp_path, parity):
    weights, x, ref = parity
    src, dst = tmp_path / "resmlp_12_timm.safetensors", tmp_path / "resmlp_12.pdparams"
    write_safetensors(str(src), weights)
    proc = subprocess.run([sys.executable, "-m", "common.port", "--model", "resmlp_12_224", "--src", str(src),
                           "--dst", str(dst)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ported 150 tensors" in proc.stdout and "leftover source tensors: 0" in proc.stdout
    out = paddle_logits("resmlp_12_224", load_paddle_file(str(dst)), x)
    assert ref.std() > 0.05  # the comparison is not between two near-constant vectors
    r = rel_diff(out, ref)
    print(f"\nresmlp_12_224 fixture parity (no torch): relative {r:.2e}")
    assert r < TOL


def test_fb_layout_without_torch(tmp_path, parity):
    weights, x, ref = parity
    src, dst = tmp_path / "fb.safetensors", tmp_path / "fb.pdparams"
    fb = timm_to_fb(weights)
    assert "patch_embed.proj.weight" in fb and fb["blocks.0.norm1.alpha"].ndim == 1
    write_safetensors(str(src), fb)
    port("--model", "resmlp_12_224", "--src", src, "--dst", dst)
    assert rel_diff(paddle_logits("resmlp_12_224", load_paddle_file(str(dst)), x), ref) < TOL


def test_wrong_mapping_breaks_parity(parity):
    """The token-mixing weight is square: without its transpose every shape check passes, only logits fail."""
    weights, x, ref = parity
    shapes = {k: tuple(v.shape) for k, v in create_resmlp("resmlp_12_224").state_dict().items()}
    good, _ = port_state_dict(weights, shapes, TIMM_RULES)
    assert rel_diff(paddle_logits("resmlp_12_224", good, x), ref) < TOL
    no_token_transpose = [r for r in TIMM_RULES if not isinstance(r, Transpose)] + \
        [Transpose(r".*(mlp_channels|head).*\.weight")]
    bad, _ = port_state_dict(weights, shapes, no_token_transpose)
    assert rel_diff(paddle_logits("resmlp_12_224", bad, x), ref) > 1e-2
    swapped = dict(good)
    swapped["mixer_layers.5.ls1"] = good["mixer_layers.5.ls2"]
    swapped["mixer_layers.5.ls2"] = good["mixer_layers.5.ls1"]
    assert rel_diff(paddle_logits("resmlp_12_224", swapped, x), ref) > 1e-4
    # the FB layout without its alpha/beta reshape is caught by the shape check, naming the key
    with pytest.raises(PortError, match=r"norm1\.alpha"):
        port_state_dict(timm_to_fb(weights), shapes, [r for r in FB_RULES if "Reshape" not in repr(r)])


def test_paddle_layout_ports_as_identity(tmp_path, parity):
    weights, _, _ = parity
    src, first, second = tmp_path / "t.safetensors", tmp_path / "a.pdparams", tmp_path / "b.pdparams"
    write_safetensors(str(src), weights)
    port("--model", "resmlp_12_224", "--src", src, "--dst", first)
    port("--model", "resmlp_12_224", "--src", first, "--dst", second)  # PaddleViT-style .pdparams in
    a, b = load_paddle_file(str(first)), load_paddle_file(str(second))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_key_selection_and_new_head(tmp_path, parity, capsys):
    weights, _, _ = parity
    ema = {k: v + 1.0 for k, v in weights.items()}
    src, dst = tmp_path / "ckpt.pdopt", tmp_path / "out.pdparams"
    paddle.save({"model": {f"module.{k}": v for k, v in weights.items()}, "model_ema": ema, "epoch": 3}, str(src))
    port("--model", "resmlp_12_224", "--src", src, "--dst", dst)
    assert "model_ema" in capsys.readouterr().out  # told that an EMA copy exists
    np.testing.assert_array_equal(load_paddle_file(str(dst))["norm.beta"], weights["norm.beta"])
    port("--model", "resmlp_12_224", "--src", src, "--dst", dst, "--key", "model_ema")
    np.testing.assert_array_equal(load_paddle_file(str(dst))["norm.beta"], ema["norm.beta"])
    # a 10-class model: the 1000-class head must be refused unless the head is declared new
    assert main(["--model", "resmlp_12_224", "--src", str(src), "--dst", str(dst), "--num-classes", "10"]) == 1
    assert "head.weight" in capsys.readouterr().err
    port("--model", "resmlp_12_224", "--src", src, "--dst", dst, "--num-classes", "10", "--allow-missing", "head")
    out = capsys.readouterr().out
    assert "allow-missing" in out and "head.weight" in out
    state = load_paddle_file(str(dst))
    assert "head.weight" not in state and len(state) == 148
    with pytest.warns(UserWarning, match="head"):  # Paddle warns for each key it does not find
        missing, unexpected = create_resmlp("resmlp_12_224", num_classes=10).set_state_dict(state)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected


def test_cli_strictness_names_keys(tmp_path, parity, capsys):
    weights, _, _ = parity
    dst = tmp_path / "never.pdparams"
    cases = {
        "extra": (dict(weights, **{"blocks.0.extra.weight": np.zeros((2, 2), np.float32)}), "blocks.0.extra.weight"),
        "missing": ({k: v for k, v in weights.items() if k != "blocks.3.ls2"}, "mixer_layers.3.ls2"),
        "shape": (dict(weights, **{"blocks.2.mlp_channels.fc1.bias": np.zeros(7, np.float32)}),
                  "blocks.2.mlp_channels.fc1.bias"),
    }
    for name, (state, key) in cases.items():
        src = tmp_path / f"{name}.safetensors"
        write_safetensors(str(src), state)
        assert main(["--model", "resmlp_12_224", "--src", str(src), "--dst", str(dst)]) == 1, name
        assert key in capsys.readouterr().err, name
        assert not dst.exists()


def test_cli_help_list_and_unknown_model(capsys):
    proc = subprocess.run([sys.executable, "-m", "common.port", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--model" in proc.stdout and "--verify" in proc.stdout
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for arch, aliases in ZOO.items():
        for name in [arch] + aliases:
            assert name in listed
    assert main(["--model", "resmlp_99_224", "--src", "x", "--dst", "y"]) == 2
    err = capsys.readouterr().err
    assert "resmlp_99_224" in err and "resmlp_big_24_22k_224" in err


def test_verify_without_reference_package_says_so(tmp_path, parity, monkeypatch, capsys):
    weights, _, _ = parity
    src, dst = tmp_path / "t.safetensors", tmp_path / "t.pdparams"
    write_safetensors(str(src), weights)

    def no_timm(num_classes=None):
        raise ImportError("No module named 'timm'")

    monkeypatch.setattr(PORT_SPECS["resmlp_12_224"].reference, "build", no_timm)
    assert main(["--model", "resmlp_12_224", "--src", str(src), "--dst", str(dst), "--verify"]) == 3
    assert "not verified" in capsys.readouterr().out and dst.exists()


def test_registry_is_discovered_not_imported():
    import common.port

    registry, origin, errors = discover_specs()
    assert set(PORT_SPECS) <= set(registry)
    assert origin["resmlp_24_224"] == "resmlp.port_weights"
    assert len(registry) >= 9 and "resmlp.port_weights" not in errors
    import re
    with open(common.port.__file__) as f:
        imports = [line for line in f if re.match(r"\s*(from|import)\s", line)]
    assert not [line for line in imports if "resmlp" in line]  # common imports no method folder


# --------------------------------------------------------------------------------------------------------------
# Live against timm (torch + timm installed)

def _timm_model(name, seed):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = seeded_state(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model


def _timm_logits(model, x):
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("arch", list(ZOO))
def test_live_zoo_parity_with_timm(arch, tmp_path):
    """Each architecture: random timm weights -> torch.save -> CLI -> Paddle logits == timm logits. The other
    zoo names of the architecture go through the CLI's name resolution and must give the identical file."""
    torch = pytest.importorskip("torch")
    model = _timm_model(arch, seed=sorted(ZOO).index(arch) + 100)
    src, dst = tmp_path / f"{arch}.pth", tmp_path / f"{arch}.pdparams"
    torch.save(model.state_dict(), str(src))
    x = seeded_input((1 if "big" in arch else 2, 3, 224, 224), seed=5)
    ref = _timm_logits(model, x)
    del model
    port("--model", arch, "--src", src, "--dst", dst)
    base = load_paddle_file(str(dst))
    out = paddle_logits(arch, base, x)
    r = rel_diff(out, ref)
    print(f"\n{arch}: max|diff| {np.abs(out - ref).max():.2e}, max|ref| {np.abs(ref).max():.2e}, relative {r:.2e}")
    assert ref.std() > 0.05
    assert r < TOL
    for alias in ZOO[arch]:
        adst = tmp_path / f"{alias}.pdparams"
        port("--model", alias, "--src", src, "--dst", adst)
        other = load_paddle_file(str(adst))
        assert sorted(other) == sorted(base)
        for k in base:
            np.testing.assert_array_equal(other[k], base[k], err_msg=f"{alias}: {k}")
        print(f"{alias}: same architecture as {arch}, identical ported file -> relative {r:.2e}")


@pytest.fixture(scope="module")
def live_resmlp_12(tmp_path_factory):
    torch = pytest.importorskip("torch")
    model = _timm_model("resmlp_12_224", seed=7)
    folder = tmp_path_factory.mktemp("live12")
    path = folder / "timm.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, str(path))
    return model, path, folder


def test_live_fb_checkpoint(live_resmlp_12):
    import torch
    from timm.models.mlp_mixer import checkpoint_filter_fn

    model, _, folder = live_resmlp_12
    fb = timm_to_fb(model.state_dict())
    back = checkpoint_filter_fn(fb, model)  # the test's FB layout is what timm expects from FB
    assert sorted(back) == sorted(model.state_dict())
    src, dst = folder / "fb_legacy.pth", folder / "fb.pdparams"
    torch.save({"model": fb}, str(src), _use_new_zipfile_serialization=False)
    port("--model", "resmlp_12_distilled_224", "--src", src, "--dst", dst, "--verify")
    x = seeded_input((2, 3, 224, 224), seed=9)
    r = rel_diff(paddle_logits("resmlp_12_224", load_paddle_file(str(dst)), x), _timm_logits(model, x))
    print(f"\nresmlp_12_224 from the raw FB layout: relative {r:.2e}")
    assert r < TOL


def test_live_verify_flag(live_resmlp_12, tmp_path, capsys, monkeypatch):
    _, src, _ = live_resmlp_12
    dst = tmp_path / "v.pdparams"
    proc = subprocess.run([sys.executable, "-m", "common.port", "--model", "resmlp_12_224", "--src", str(src),
                           "--dst", str(dst), "--verify"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verify" in proc.stdout and "OK" in proc.stdout
    # a new head: both models get the same fresh head values, the rest comes from the checkpoint
    port("--model", "resmlp_12_224", "--src", src, "--dst", tmp_path / "v10.pdparams", "--num-classes", "10",
         "--allow-missing", "head", "--verify")
    assert "OK" in capsys.readouterr().out
    # a PaddleViT-layout source is verified through the inverse mapping
    port("--model", "resmlp_12_224", "--src", dst, "--dst", tmp_path / "w.pdparams", "--verify")
    assert "layout: paddle" in capsys.readouterr().out
    # --verify must be able to fail: drop the transposes from the rules the CLI uses
    flavour = PORT_SPECS["resmlp_12_224"].flavour("timm")
    monkeypatch.setattr(flavour, "rules", [r for r in TIMM_RULES if not isinstance(r, Transpose)]
                        + [Transpose(r".*(mlp_channels|head).*\.weight")])
    status = main(["--model", "resmlp_12_224", "--src", str(src), "--dst", str(tmp_path / "bad.pdparams"),
                   "--verify"])
    assert status == 1 and "FAILED" in capsys.readouterr().out


def test_live_reader_matches_torch_load(live_resmlp_12, tmp_path):
    import torch
    from common.porting import read_torch_checkpoint

    model, src, _ = live_resmlp_12
    ours = read_torch_checkpoint(str(src))["model"]
    theirs = torch.load(str(src), map_location="cpu", weights_only=True)["model"]
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
    half = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, str(half),
               _use_new_zipfile_serialization=False)
    ours = read_torch_checkpoint(str(half))
    for k, v in torch.load(str(half), weights_only=True).items():
        assert ours[k].dtype == np.float32
        np.testing.assert_array_equal(ours[k], v.float().numpy(), err_msg=k)
