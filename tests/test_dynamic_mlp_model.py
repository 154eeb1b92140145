"""Dynamic MLP models: fusion shapes for A/B/C and N = 1..3, the fusion math against the reference (head-only
fixture, no torch needed), parameter counts of the paper's models, missing metadata, dropout, gradients."""
import os

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from common.porting import port_state_dict, seeded_state
from dynamic_mlp.dynamic_mlp import FCNet, build_fusion
from dynamic_mlp.model import MODELS, PAPER_MODELS, create_model
from dynamic_mlp.port_weights import OFFICIAL_RULES

FUSION = os.path.join(os.path.dirname(__file__), "fixtures", "dynamic_mlp", "fusion_parity.npz")


def n_params(layer):
    return sum(int(np.prod(p.shape)) for p in layer.parameters() if not p.stop_gradient)


def rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_fusion_shapes(variant, n):
    fusion = build_fusion(48, variant, d=16, h=8, n=n)
    assert len(fusion.conv2) == n
    dims = [(b.dynamic_conv.cin, b.dynamic_conv.cout) for b in fusion.conv2]
    assert dims == ([(16, 16)] if n == 1 else [(16, 8)] + [(8, 8)] * (n - 2) + [(8, 16)])
    feat, loc = paddle.randn([5, 48]), paddle.randn([5, 16])
    out = fusion(feat, loc)
    assert out.shape == [5, 48]
    # the generated matrices have cin x cout entries per sample
    first = fusion.conv2[0].dynamic_conv
    gen = first.get_weight if variant == "a" else first.conv22
    assert gen.weight.shape[1] == dims[0][0] * dims[0][1]
    assert FCNet(6, 16, width=32)(paddle.randn([5, 6])).shape == [5, 16]


def test_paper_parameter_counts():
    """Totals of the reference models with 10000 classes (counted with the authors' code)."""
    want = {"resnet50_image_only": 43_998_032, "resnet50_dynamic_mlp_c": 51_366_928,
            "sk2res2net101_image_only": 66_821_777, "sk2res2net101_dynamic_mlp_c": 74_190_673}
    assert set(want) == set(PAPER_MODELS)
    for name, count in want.items():
        assert n_params(create_model(name, num_classes=10000)) == count, name
    # head sizes of the other variants and depths (reference: A N=2 9,476,992; B 6,623,680; C N=1 18,292,736;
    # C N=3 7,091,072; location encoder 593,664)
    assert n_params(FCNet(6, 256)) == 593_664
    for (variant, n), count in {("a", 2): 9_476_992, ("b", 2): 6_623_680, ("c", 1): 18_292_736,
                                ("c", 3): 7_091_072, ("c", 2): 6_775_232}.items():
        assert n_params(build_fusion(2048, variant, n=n)) == count, (variant, n)


class _Head(nn.Layer):
    def __init__(self, variant, n):
        super().__init__()
        self.loc_net = FCNet(6, 16, width=32)
        self.loc_att = build_fusion(32, variant, d=16, h=8, n=n)


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_fusion_matches_reference(variant, n):
    """Location encoder + fusion with the reference's weights (seeded recipe) give the reference's outputs."""
    with np.load(FUSION) as z:
        tag = f"{variant}{n}"
        keys = str(z[f"{tag}_keys"]).split("\n")
        shapes = {k: tuple(int(d) for d in row if d >= 0) for k, row in zip(keys, z[f"{tag}_shapes"])}
        weights = seeded_state(shapes, int(z["seed"]))
        head = _Head(variant, n)
        ported, _ = port_state_dict(weights, {k: tuple(v.shape) for k, v in head.state_dict().items()},
                                    OFFICIAL_RULES)
        head.set_state_dict(ported)
        head.eval()
        with paddle.no_grad():
            loc = head.loc_net(paddle.to_tensor(z["loc_input"]))
            fused = head.loc_att(paddle.to_tensor(z["feature"]), loc)
        assert rel(loc.numpy(), z[f"{tag}_loc"]) < 1e-5
        residual_ref = z[f"{tag}_fused"] - z["feature"]
        assert rel(fused.numpy() - z["feature"], residual_ref) < 1e-5
        assert np.abs(residual_ref).max() > 0.1  # the fusion does change the feature


def test_registry_and_overrides():
    assert {"resnet50_dynamic_mlp_c", "sk2res2net101_image_only", "resnet18_dynamic_mlp_a"} <= set(MODELS)
    m = create_model("resnet18_dynamic_mlp_c", num_classes=4, metadata="geo", mlp_d=32, mlp_h=8, mlp_n=3)
    assert m.loc_net.feats[0].weight.shape == [4, 256] and len(m.loc_att.conv2) == 3
    assert m.loc_att.conv2[0].dynamic_conv.cin == 32
    plain = create_model("resnet18_dynamic_mlp_c", num_classes=4, mlp_type="none")
    assert not hasattr(plain, "loc_net")
    assert type(create_model("resnet18_image_only", num_classes=4, mlp_type="b").loc_att.conv2[0].dynamic_conv
                ).__name__ == "DynamicMLPB"
    with pytest.raises(KeyError, match="unknown Dynamic MLP model"):
        create_model("resnet50_dynamic_mlp_d")
    with pytest.raises(ValueError, match="unknown Dynamic MLP type 'e'"):
        create_model("resnet18_image_only", mlp_type="e")
    keys = m.classifier_keys()
    assert "fc.weight" in keys and any(k.startswith("loc_att.") for k in keys) and "conv1.weight" not in keys


def test_missing_metadata_dropout_and_gradients():
    paddle.seed(0)
    m = create_model("resnet18_dynamic_mlp_c", num_classes=3, mlp_d=32, mlp_h=8)
    x = paddle.randn([4, 3, 32, 32])
    loc = paddle.randn([4, 6])
    m.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(m(x).numpy(), m(x, paddle.zeros([4, 6])).numpy())  # None = unknown
        a, b = m(x, loc).numpy(), m(x, loc).numpy()
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - m(x).numpy()).max() > 1e-4  # the metadata changes the prediction
    m.train()
    with paddle.no_grad():
        f1, f2 = m.loc_net(loc).numpy(), m.loc_net(loc).numpy()
    assert np.abs(f1 - f2).max() > 0  # dropout 0.5 inside the location encoder while training
    loss = m(x, loc).sum()
    loss.backward()
    for name in ("loc_net.feats.0.weight", "loc_att.conv2.0.dynamic_conv.conv22.weight", "layer1.0.conv1.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_recipe_configs():
    """The four README runs resolve to the authors' recipe and the right models."""
    from common.cli import build_parser, config_from_args
    from common.engine.lr import scaled_lrs
    from dynamic_mlp.method import DynamicMLPMethod, config_uses_metadata
    cfg_dir = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "dynamic_mlp")
    for name in PAPER_MODELS:
        args = build_parser().parse_args(["-cfg", os.path.join(cfg_dir, f"{name}.yaml")])
        c = config_from_args(args, DynamicMLPMethod().get_config())
        assert c.MODEL.NAME == name and c.MODEL.NUM_CLASSES == 10000
        assert config_uses_metadata(c) == ("dynamic" in name)
        assert c.DATA.DATASET == "list" and c.DATA.DATA_PATH == "data/inat21_mini"   # common.prepare's output
        assert c.DATA.TRAIN_JSON == "train_mini.json" and c.DATA.IMAGE_SIZE == 224
        t = c.TRAIN
        assert (t.EPOCHS, t.WARMUP_EPOCHS, t.BASE_LR, t.LINEAR_SCALED_LR, t.WEIGHT_DECAY) == (90, 2, 0.04, 512, 1e-4)
        assert t.OPTIMIZER.NAME == "SGD" and t.OPTIMIZER.MOMENTUM == 0.9 and not t.OPTIMIZER.NESTEROV
        assert t.SMOOTHING == 0.1 and t.SMOOTHING_MODE == "others" and t.MIN_LR == 0.0
        assert (c.AUG.MIXUP_ALPHA, c.AUG.CUTMIX_ALPHA, c.AUG.MIXUP_PROB) == (0.4, 0.0, 1.0)
        assert c.AUG.RAND_AUGMENT == "" and c.AUG.RE_PROB == 0.0 and c.DATA.INTERPOLATION == "bilinear"
        assert c.AMP.ENABLE and c.MODEL.DYNAMIC_MLP.TYPE == "" and (c.MODEL.DYNAMIC_MLP.D, c.MODEL.DYNAMIC_MLP.H,
                                                                    c.MODEL.DYNAMIC_MLP.N) == (256, 64, 2)
        assert scaled_lrs(c, total_batch=8 * c.DATA.BATCH_SIZE)[0] == pytest.approx(0.04)
