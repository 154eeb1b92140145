"""PIM parity with the official code (chou141253/FGVC-PIM), through the porting CLI.

Fixtures (tests/fixtures/pim/*.npz, made by make_fixtures.py from the reference in float64): a small Swin with
Linear projections and Conv1d-over-tokens merging, and ResNet-50 with 1x1-conv projections and bilinear merging.
The official state dict is rebuilt from the committed seeds, written as a checkpoint, ported with
``python pim/port_weights.py -cfg ...``, and our float32 model must match: backbone levels, FPN outputs, per-token
logits, the selector's ranking (exactly), selected / dropped logits, combiner logits and every loss term, each to
max|diff| / max|ref| < 1e-5. With torch installed, the backbones are also compared live with timm / torchvision.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import paddle  # noqa: E402

from common.porting import (Transpose, fingerprint, port_state_dict, seeded_input, seeded_state,  # noqa: E402
                            write_safetensors)
from common.safe_pickle import load_paddle_file  # noqa: E402
from pim.method import PIMMethod  # noqa: E402
from pim.pim_module import pim_loss  # noqa: E402
from pim.port_weights import PIM_RULES  # noqa: E402

FIXTURES = os.path.join(REPO, "tests", "fixtures", "pim")
LAYERS = ["layer1", "layer2", "layer3", "layer4"]
TOL = 1e-5


def rel(out, ref, scale=None):
    scale = float(np.abs(ref).max()) if scale is None else float(scale)
    return float(np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64)).max() / scale)


def fixture_opts(z):
    """-opts for the fixture's configuration."""
    opts = ["MODEL.NUM_CLASSES", str(int(z["cfg_num_classes"])), "DATA.IMAGE_SIZE", str(int(z["cfg_image_size"])),
            "MODEL.PIM.FPN_SIZE", str(int(z["cfg_fpn_size"])),
            "MODEL.PIM.NUM_SELECTS", str([int(n) for n in z["cfg_num_selects"]]).replace(" ", ""),
            "MODEL.DROPPATH", "0.0"]
    if str(z["cfg_family"]) == "swin":
        opts += ["MODEL.NAME", "swin_tiny_patch4_window7_224",
                 "MODEL.PIM.SWIN.PATCH_SIZE", str(int(z["cfg_swin_patch_size"])),
                 "MODEL.PIM.SWIN.EMBED_DIM", str(int(z["cfg_swin_embed_dim"])),
                 "MODEL.PIM.SWIN.DEPTHS", str([int(d) for d in z["cfg_swin_depths"]]).replace(" ", ""),
                 "MODEL.PIM.SWIN.NUM_HEADS", str([int(d) for d in z["cfg_swin_num_heads"]]).replace(" ", ""),
                 "MODEL.PIM.SWIN.WINDOW_SIZE", str(int(z["cfg_swin_window_size"]))]
    else:
        opts += ["MODEL.NAME", "resnet50"]
    return opts


def load_fixture(name):
    z = dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))
    keys = str(z["keys"]).split("\n")
    shapes = {k: tuple(int(d) for d in row if d >= 0) for k, row in zip(keys, z["shapes"])}
    int_keys = set(str(z["int_keys"]).split("\n")) - {""}
    weights = seeded_state(shapes, int(z["weight_seed"]), {k: "int64" for k in int_keys})
    for k in weights:
        if k.startswith("fpn_classifier_") and k.endswith(".3.weight"):
            weights[k] = (weights[k] * float(z["head_scale"])).astype(np.float32)
    x = seeded_input(tuple(z["input_shape"]), int(z["input_seed"]))
    buffers = {k: tuple(int(d) for d in row if d >= 0)
               for k, row in zip(str(z["buffer_keys"]).split("\n"), z["buffer_shapes"]) if k}
    if not np.allclose(fingerprint(weights), z["weights_fingerprint"], rtol=1e-9) or \
            not np.allclose(fingerprint([x]), z["input_fingerprint"], rtol=1e-9):
        pytest.fail("numpy's RandomState no longer reproduces the fixture's weights/input; regenerate with "
                    "tests/fixtures/pim/make_fixtures.py (this is not a porting error)")
    return z, weights, x, buffers


def build(opts):
    from common.cli import build_parser, config_from_args
    method = PIMMethod()
    config = config_from_args(build_parser().parse_args(["-opts", *opts]), method.get_config())
    return method, method.build_model(config)


def run_model(model, state, x):
    missing, unexpected = model.set_state_dict(state)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    with paddle.no_grad():
        return {k: v.numpy() for k, v in model(paddle.to_tensor(x), details=True).items()}


def compare(z, out, log):
    """Every stage against the reference; returns {stage: relative difference}."""
    res = {}
    for layer in LAYERS:
        for what, ours in (("backbone", out["backbone_" + layer]), ("fpn", out["fpn_" + layer])):
            assert list(ours.shape) == list(z[f"{what}_{layer}_shape"]), (what, layer, ours.shape)
            sub = ours.reshape(-1)[z[f"sub_{layer}_{what}"]]
            res[f"{what} {layer}"] = rel(sub, z[f"{what}_{layer}"], z[f"{what}_{layer}_absmax"])
            sumsq = float((ours.astype(np.float64) ** 2).sum())
            assert sumsq == pytest.approx(float(z[f"{what}_{layer}_sumsq"]), rel=TOL), (what, layer)
        ref_logits = z[f"logits_{layer}"]
        res[f"logits {layer}"] = rel(out[layer], ref_logits)
        order = z[f"order_{layer}"].astype(np.int64)
        n = out["select_idx_" + layer].shape[1]
        np.testing.assert_array_equal(out["select_idx_" + layer], order[:, :n], err_msg=f"selection {layer}")
        np.testing.assert_array_equal(out["drop_idx_" + layer], order[:, n:], err_msg=f"dropped {layer}")
        ranked = np.take_along_axis(ref_logits, order[..., None], axis=1)
        res[f"select {layer}"] = rel(out["select_" + layer], ranked[:, :n])
        res[f"drop {layer}"] = rel(out["drop_" + layer], ranked[:, n:])
    res["combiner"] = rel(out["comb_outs"], z["comb_outs"])
    log(", ".join(f"{k} {v:.1e}" for k, v in res.items()))
    return res


def reference_loss_terms(z, lambdas):
    return {"loss_b": lambdas["lambda_b"] * z["ce_b"].sum(), "loss_s": lambdas["lambda_s"] * z["ce_s"].sum(),
            "loss_n": lambdas["lambda_n"] * z["mse_n"].sum(), "loss_c": lambdas["lambda_c"] * float(z["ce_c"])}


@pytest.mark.parametrize("name", ["pim_swin_tiny", "pim_resnet50"])
def test_parity_with_official_code_through_port_cli(name, tmp_path):
    z, weights, x, buffers = load_fixture(name)
    src, dst = tmp_path / "best.safetensors", tmp_path / "pim.pdparams"
    # every key of the official state dict: also the Swin buffers, which the port must drop (values do not matter)
    geometry = {k: np.zeros(s, np.int64 if "index" in k else np.float32) for k, s in buffers.items()}
    write_safetensors(str(src), {**weights, **geometry})
    opts = fixture_opts(z)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "pim", "port_weights.py"), "-cfg",
                           os.path.join(REPO, "configs", "pim", "demo.yaml"), "--src", str(src), "--dst", str(dst),
                           "-opts", *opts], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leftover source tensors: 0" in proc.stdout, proc.stdout
    method, model = build(opts)
    out = run_model(model, load_paddle_file(str(dst)), x)
    res = compare(z, out, lambda m: print(f"\n{name} parity: {m}"))
    assert max(res.values()) < TOL, res
    # every loss term, with the selected-token term switched on too
    lambdas = dict(lambda_b=0.5, lambda_s=1.0, lambda_n=5.0, lambda_c=1.0)
    outs = {k: paddle.to_tensor(v) for k, v in out.items()}
    total, terms = pim_loss(outs, paddle.to_tensor(z["labels"]), list(model.layer_names), **lambdas)
    expected = reference_loss_terms(z, lambdas)
    for k, v in expected.items():
        assert float(terms[k]) == pytest.approx(v, rel=TOL), k
    assert float(total) == pytest.approx(sum(expected.values()), rel=TOL)


def test_wrong_mapping_breaks_parity():
    """The FPN's first projection is a square Linear: without its transpose every shape check passes and only the
    numbers catch it."""
    z, weights, x, _ = load_fixture("pim_swin_tiny")
    method, model = build(fixture_opts(z))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    good, _ = port_state_dict(weights, shapes, PIM_RULES)
    assert rel(run_model(model, good, x)["comb_outs"], z["comb_outs"]) < TOL
    partial = [r for r in PIM_RULES if not isinstance(r, Transpose)] + \
        [Transpose(r"(?!fpn\.Proj_layer\d\.0\.).*\.weight")]
    bad, _ = port_state_dict(weights, shapes, partial)
    assert rel(run_model(model, bad, x)["fpn_layer1"].reshape(-1)[z["sub_layer1_fpn"]], z["fpn_layer1"],
               z["fpn_layer1_absmax"]) > 1e-2


# --------------------------------------------------------------------------------------------------------------
# Live against timm / torchvision (torch installed)

def _seeded_torch(model, seed):
    import torch
    sd = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in sd.items()}
    w = seeded_state(shapes, seed, dtypes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()})
    return w


def _backbone_parity(family, ref_levels, weights, net_name, size, overrides, layout="new"):
    from pim.model import create_backbone
    from pim.port_weights import backbone_rules
    net, _ = create_backbone(net_name, size, drop_path=0.0, **overrides)
    shapes = {"backbone." + k: tuple(v.shape) for k, v in net.state_dict().items()}
    ported, _ = port_state_dict(weights, shapes, backbone_rules(family, layout))
    net.set_state_dict({k[len("backbone."):]: v for k, v in ported.items()})
    net.eval()
    x = seeded_input((2, 3, size, size), 5)
    refs = ref_levels(x)
    with paddle.no_grad():
        ours = net.stage_features(paddle.to_tensor(x)) if hasattr(net, "stage_features") else \
            net(paddle.to_tensor(x))
    res = [rel(o.numpy(), r) for o, r in zip(ours, refs)]
    assert len(res) == 4 and max(res) < TOL, res
    return res


def test_live_swin_timm_new_layout():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from timm.models.swin_transformer import SwinTransformer
    ref = SwinTransformer(img_size=96, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                          window_size=3, num_classes=5).eval()
    w = _seeded_torch(ref, 11)
    assert "layers.1.downsample.reduction.weight" in w and "layers.0.downsample.reduction.weight" not in w

    def levels(x):
        with torch.no_grad():
            h = ref.layers[0](ref.patch_embed(torch.from_numpy(x)))
            outs = []
            for i in (1, 2, 3):
                h = ref.layers[i].downsample(h)
                outs.append(h.flatten(1, 2).numpy())
                h = ref.layers[i].blocks(h)
            return outs + [h.flatten(1, 2).numpy()]

    res = _backbone_parity("swin", levels, w, "swin_tiny_patch4_window7_224", 96,
                           dict(patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                window_size=3))
    print(f"\nSwin (timm {timm.__version__} layout) levels: " + ", ".join(f"{r:.1e}" for r in res))


def test_live_vit_timm():
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer
    ref = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=6, num_heads=2, qkv_bias=False,
                            num_classes=5).eval()
    w = _seeded_torch(ref, 12)

    def levels(x):
        with torch.no_grad():
            h = ref.norm_pre(ref._pos_embed(ref.patch_embed(torch.from_numpy(x))))
            outs = []
            for i, blk in enumerate(ref.blocks):
                h = blk(h)
                if i >= 2:
                    outs.append(h.numpy())
            return outs

    res = _backbone_parity("vit", levels, w, "vit_base_patch16_224_miil", 64,
                           dict(embed_dim=32, depth=6, num_heads=2))
    print("\nViT levels: " + ", ".join(f"{r:.1e}" for r in res))


def test_live_efficientnet_torchvision():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from functools import partial

    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
    setting, _ = _efficientnet_conf("efficientnet_b7", width_mult=0.25, depth_mult=0.4)
    ref = EfficientNet(setting, 0.5, norm_layer=partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.01)).eval()
    w = _seeded_torch(ref, 13)

    def levels(x):
        with torch.no_grad():
            h, outs = torch.from_numpy(x), []
            for i in range(8):
                h = ref.features[i](h)
                if i >= 4:
                    outs.append(h.numpy())
            return outs

    res = _backbone_parity("efficientnet", levels, w, "efficientnet_b7", 72, dict(width_mult=0.25, depth_mult=0.4))
    print("\nEfficientNet levels: " + ", ".join(f"{r:.1e}" for r in res))


def test_live_official_checkpoint_file(tmp_path):
    """A torch.save'd {'model', 'optimizer', 'epoch'} like the reference's best.pt ports through the CLI."""
    torch = pytest.importorskip("torch")
    z, weights, x, _ = load_fixture("pim_swin_tiny")
    src, dst = tmp_path / "best.pt", tmp_path / "pim.pdparams"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}, "optimizer": {"state": {}},
                "epoch": 49}, str(src))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "pim", "port_weights.py"), "-cfg",
                           os.path.join(REPO, "configs", "pim", "demo.yaml"), "--src", str(src), "--dst", str(dst),
                           "-opts", *fixture_opts(z)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, model = build(fixture_opts(z))
    assert rel(run_model(model, load_paddle_file(str(dst)), x)["comb_outs"], z["comb_outs"]) < TOL


def test_official_checkpoint_as_pretrained_is_ported_on_the_fly_for_the_configs_model(tmp_path, monkeypatch):
    """-pretrained best.pt (the reference's {'model', 'optimizer', 'epoch'} file) with no separate port step: ported
    for the model the config builds (not only the paper's registered Swin-L), cached, and equal to the reference."""
    torch = pytest.importorskip("torch")
    from common.checkpoint import load_pretrained
    monkeypatch.setenv("SUITE_CACHE", str(tmp_path / "cache"))
    z, weights, x, _ = load_fixture("pim_swin_tiny")
    src = tmp_path / "best.pt"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}, "optimizer": {"state": {}},
                "epoch": 49}, str(src))
    logs = []
    _, model = build(fixture_opts(z))
    load_pretrained(model, str(src), log=logs.append, model_name="swin_tiny_patch4_window7_224", method="pim")
    assert any("ported for swin_tiny_patch4_window7_224-" in m and "/local/best-" in m for m in logs), logs
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(x))
    assert rel(out["comb_outs"].numpy(), z["comb_outs"]) < TOL
    _, again = build(fixture_opts(z))                    # the second load uses the cached port
    load_pretrained(again, str(src), log=logs.append, model_name="swin_tiny_patch4_window7_224", method="pim")
    assert "using its port cached at" in logs[-2]


def test_backbone_port_cli_then_pretrained_with_new_plug_in(tmp_path):
    """torchvision-named ResNet weights -> `python -m common.port --model pim_backbone_resnet18` -> a PIM model
    loads them with -pretrained + MODEL.PRETRAINED_NEW_HEAD (the plug-in module stays as initialised)."""
    from common.checkpoint import CheckpointMismatchError, load_pretrained
    from pim.model import build_pim, create_backbone
    net, _ = create_backbone("resnet18", 64)
    shapes = {k.replace("._mean", ".running_mean").replace("._variance", ".running_var"): tuple(v.shape)
              for k, v in net.state_dict().items()}
    shapes.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    weights = seeded_state(shapes, 21)
    src, dst = tmp_path / "resnet18.safetensors", tmp_path / "r18.pdparams"
    write_safetensors(str(src), weights)
    proc = subprocess.run([sys.executable, "-m", "common.port", "--model", "pim_backbone_resnet18", "--src",
                           str(src), "--dst", str(dst)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fc.weight" in proc.stdout and "leftover source tensors: 0" in proc.stdout  # the classifier is dropped
    model = build_pim("resnet18", 5, img_size=64, fpn_size=16, num_selects=[32, 16, 8, 4])
    with pytest.raises(CheckpointMismatchError, match="fpn_classifier_layer1"):
        load_pretrained(model, str(dst), log=lambda m: None)
    with warnings.catch_warnings():  # Paddle warns once per key the file does not have: the new plug-in module
        warnings.simplefilter("ignore")
        skipped = load_pretrained(model, str(dst), new_head=True, log=lambda m: None)
    assert skipped and all(not k.startswith("backbone.") for k in skipped)
    state = model.state_dict()
    np.testing.assert_array_equal(state["backbone.conv1.weight"].numpy(), weights["conv1.weight"])
    np.testing.assert_array_equal(state["backbone.layer4.1.bn2._variance"].numpy(),
                                  weights["layer4.1.bn2.running_var"])
