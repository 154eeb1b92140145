"""The one model registry (common/models.py): every method's models are listed and built through it, in a user's
own script as in the engine, and every shipped config names a registered model of its own method."""
import glob
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from common import models
from common.launch import model_key_in_config
from tests.helpers import REPO, env

TINY_RESMLP = {"MODEL.MIXER.PATCH_SIZE": 8, "MODEL.MIXER.EMBED_DIM": 32, "MODEL.MIXER.DEPTH": 2}


def test_every_method_registers_its_models():
    assert sorted(models.methods()) == ["dynamic_mlp", "pim", "resmlp", "transfer"]
    assert not models.discovery_errors()
    by_method = {m: models.list_models(method=m) for m in models.methods()}
    assert "resmlp_big_24_22k_224" in by_method["resmlp"]
    assert {"resnet50_dynamic_mlp_a", "resnet50_dynamic_mlp_b", "resnet50_dynamic_mlp_c",
            "sk2res2net101_image_only"} <= set(by_method["dynamic_mlp"])
    assert {"pim_swin_large_patch4_window12_384", "pim_resnet50", "pim_vit_base_patch16_224",
            "pim_efficientnet_b7"} <= set(by_method["pim"])
    assert {"inception_v4", "resnet50"} <= set(by_method["transfer"])
    assert models.list_models("resmlp_24*") == ["resmlp_24_224", "resmlp_24_distilled_224"]


@pytest.mark.parametrize("cfg", sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yaml"))),
                         ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_names_a_model_of_its_method(cfg):
    method, name = model_key_in_config(cfg, "METHOD"), model_key_in_config(cfg, "NAME")
    if name is None:      # a recipe that leaves the model to the configs that include it
        return
    assert [m.method for m in models.find_models(name, method)] == [method]


def test_create_model_builds_what_the_engine_builds_and_loads_pdparams(tmp_path):
    paddle.seed(0)
    model = models.create_model("resmlp_12_224", num_classes=5, image_size=32, opts=TINY_RESMLP)
    assert not model.training and model.head.weight.shape == [32, 5]
    path = str(tmp_path / "w.pdparams")
    paddle.save(model.state_dict(), path)
    paddle.seed(1)
    again = models.create_model("resmlp_12_224", num_classes=5, image_size=32, opts=TINY_RESMLP, pretrained=path)
    x = paddle.to_tensor(np.random.RandomState(0).randn(2, 3, 32, 32).astype("float32"))
    np.testing.assert_array_equal(model(x).numpy(), again(x).numpy())
    # the engine's own path: the method's config + build_model give the same architecture
    config = models.model_config("resmlp_12_224", num_classes=5, image_size=32, opts=TINY_RESMLP)
    engine = models.get_method("resmlp").build_model(config)
    assert [p.shape for p in engine.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("name,size,inputs", [
    ("resnet18_dynamic_mlp_c", 32, 2), ("resnet18_image_only", 32, 1), ("resnet18", 32, 1),
    ("pim_resnet18", 64, 1)])
def test_create_model_builds_every_method(name, size, inputs):
    opts = {"MODEL.PIM.NUM_SELECTS": [32, 16, 4, 2], "MODEL.PIM.FPN_SIZE": 32} if name.startswith("pim_") else None
    model = models.create_model(name, num_classes=7, image_size=size, opts=opts)
    x = [paddle.randn([2, 3, size, size])] + ([paddle.zeros([2, 6])] if inputs == 2 else [])
    out = model(*x)
    logits = out["comb_outs"] if isinstance(out, dict) else out
    assert logits.shape == [2, 7]


def test_pim_models_fit_their_default_size():
    """Each level selects the paper's share of its tokens (2048/512/128/32 of Swin-L 384's 2304/576/144/144), at
    most the paper's count, so every PIM entry builds at its default size."""
    from pim.model import fitting_num_selects
    assert fitting_num_selects("swin_large_patch4_window12_384", 384) == [2048, 512, 128, 32]
    assert fitting_num_selects("swin_tiny_patch4_window7_224", 224) == [697, 174, 44, 11]
    assert fitting_num_selects("resnet50", 448) == [2048, 512, 128, 32]
    assert fitting_num_selects("vit_base_patch16_224", 448) == [698, 512, 128, 32]


def test_bad_names_and_keywords_are_named():
    with pytest.raises(models.UnknownModelError, match="unknown model 'resmlp_24'; did you mean resmlp_24_224"):
        models.model_info("resmlp_24")
    with pytest.raises(TypeError, match="unexpected keyword.*drop_out.*opts="):
        models.create_model("resmlp_12_224", drop_out=0.1)
    from common.config import ConfigError
    with pytest.raises(ConfigError, match="MODEL.MIXER.DEPTHS"):
        models.create_model("resmlp_12_224", opts={"MODEL.MIXER.DEPTHS": 2})


def test_listing_shows_method_size_and_published_weights():
    out = subprocess.run([sys.executable, "-m", "common.models", "resmlp_24*", "--no-params"], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split()[:4] == ["name", "method", "params", "size"]
    assert row.split()[:4] == ["resmlp_24_224", "resmlp", "-", "224"]
    assert "timm/resmlp_24_224.fb_in1k" in row and "timm/resmlp_24_224.fb_distilled_in1k" in row
    bad = subprocess.run([sys.executable, "-m", "common.models", "nothing_*"], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: no model matches 'nothing_*'"


def test_parameter_counts_are_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_CACHE", str(tmp_path))
    rows = models.table_rows(["resmlp_12_224"])
    assert rows[0][2] == "15.4M"           # 15,350,872 parameters, as timm's resmlp_12_224
    cache = (tmp_path / "param_counts.json").read_text()
    assert "resmlp_12_224@" in cache and "15350872" in cache
