"""transfer/: the body-as-blocks view of Inception v4 and ResNet, new-layer selection and re-initialisation,
learning-rate group membership."""
import numpy as np
import paddle
import pytest

from common.config import ConfigError
from common.backbones.inception_v4 import inception_v4
from transfer.model import (body_blocks, create_model, lr_groups, max_new_layers, new_layer_blocks,
                            norm_parameter_names, parameter_blocks, reinit_new_layers)

RESNET50_BODY = ["stem"] + [f"layer{s}.{i}" for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for i in range(n)]
INCEPTION_BODY = [f"features.{i}" for i in range(22)]


@pytest.fixture(scope="module")
def inception():
    return inception_v4(num_classes=10)


@pytest.fixture(scope="module")
def resnet50():
    return create_model("resnet50", num_classes=10)


def test_inception_v4_blocks_and_size(inception):
    assert [b.name for b in body_blocks(inception)] == INCEPTION_BODY
    kinds = [type(layer).__name__ for layer in inception.features]
    assert kinds == ["BasicConv2d"] * 3 + ["Mixed3a", "Mixed4a", "Mixed5a"] + ["InceptionA"] * 4 + \
        ["ReductionA"] + ["InceptionB"] * 7 + ["ReductionB"] + ["InceptionC"] * 3
    # timm's inception_v4(num_classes=10) has the same count
    assert sum(int(np.prod(p.shape)) for p in inception.parameters() if not p.stop_gradient) == 41_158_186
    out = inception(paddle.zeros([1, 3, 75, 75]))        # the smallest input the architecture takes
    assert tuple(out.shape) == (1, 10)


def test_resnet50_blocks(resnet50):
    assert [b.name for b in body_blocks(resnet50)] == RESNET50_BODY
    assert max_new_layers(resnet50) == 18


@pytest.mark.parametrize("which", ["inception", "resnet50"])
def test_new_layer_selection_every_n(which, request):
    model = request.getfixturevalue(which)
    body = INCEPTION_BODY if which == "inception" else RESNET50_BODY
    head = "last_linear" if which == "inception" else "fc"
    top = len(body) + 1
    assert max_new_layers(model) == top
    for n in range(1, top + 1):
        names = [b.name for b in new_layer_blocks(model, n)]
        assert names == [head] + body[::-1][:n - 1], n
    for bad in (0, -1, top + 1):
        with pytest.raises(ConfigError, match=rf"TRANSFER.NEW_LAYERS {bad} is out of range .*1 \(classifier only\) "
                                              rf"to {top}"):
            new_layer_blocks(model, bad)


def test_inception_selection_matches_the_reference_swaps(inception):
    """The reference replaces, for i = 1..N-1, features[21], [20], [19] (InceptionC), [18] (ReductionB), then
    features[22 - i] (InceptionB): the same blocks as ours for its valid range N = 1..12."""
    for n in range(1, 13):
        ref = [21, 20, 19][:n - 1] + ([18] if n >= 5 else []) + [22 - i for i in range(5, n)]
        ours = [int(b.name.split(".")[1]) for b in new_layer_blocks(inception, n)[1:]]
        assert ours == ref, n


def _snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _perturb(model):
    """Every weight and BatchNorm statistic away from its initial value, as if pretrained."""
    rng = np.random.RandomState(0)
    for k, v in model.state_dict().items():
        v.set_value((v.numpy() + rng.uniform(0.5, 1.0, v.shape)).astype(v.numpy().dtype))


def test_reinit_touches_exactly_the_new_blocks_resnet18():
    model = create_model("resnet18", num_classes=5)
    _perturb(model)
    before = _snapshot(model)
    names = reinit_new_layers(model, 3)
    assert names == ["fc", "layer4.1", "layer4.0"]
    after = _snapshot(model)
    for k in before:
        new = k.startswith(("fc.", "layer4.1.", "layer4.0."))
        changed = not np.array_equal(before[k], after[k])
        assert changed == new, k
    # a fresh block: unit BatchNorm, statistics reset, He-normal (fan_out) convolutions
    np.testing.assert_array_equal(after["layer4.0.bn1.weight"], 1.0)
    np.testing.assert_array_equal(after["layer4.0.bn1.bias"], 0.0)
    np.testing.assert_array_equal(after["layer4.0.bn1._mean"], 0.0)
    np.testing.assert_array_equal(after["layer4.0.bn1._variance"], 1.0)
    w = after["layer4.0.conv2.weight"]                     # [512, 512, 3, 3]
    assert w.std() == pytest.approx(np.sqrt(2.0 / (512 * 9)), rel=0.05)
    fc = after["fc.weight"]                                # torch Linear default: U(+-1/sqrt(512))
    assert np.abs(fc).max() <= 1 / np.sqrt(512) and fc.std() == pytest.approx(1 / np.sqrt(3 * 512), rel=0.1)


def test_reinit_inception_uses_torch_defaults(inception):
    _perturb(inception)
    before = _snapshot(inception)
    assert reinit_new_layers(inception, 2) == ["last_linear", "features.21"]
    after = _snapshot(inception)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith(("last_linear.", "features.21."))}
    w = after["features.21.branch2_1.conv.weight"]        # [448, 384, 3, 1]: torch default U(+-1/sqrt(fan_in))
    fan_in = 384 * 3
    assert np.abs(w).max() <= 1 / np.sqrt(fan_in)
    assert w.std() == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.05)
    np.testing.assert_array_equal(after["features.21.branch0.bn._variance"], 1.0)


def test_parameter_membership_and_lr_groups(resnet50, inception):
    for model in (resnet50, inception):
        blocks = parameter_blocks(model)
        trainable = [n for n, p in model.named_parameters() if not p.stop_gradient]
        assert sorted(blocks) == sorted(trainable)
    g = lr_groups(resnet50, 4)          # stem + layer1.0-2 low
    assert g["conv1.weight"] == g["bn1.bias"] == g["layer1.2.conv3.weight"] == "low"
    assert g["layer2.0.downsample.0.weight"] == g["layer4.2.bn3.weight"] == "high"
    assert g["fc.weight"] == g["fc.bias"] == "head"
    g = lr_groups(inception, 8)         # the reference README's --num-lowlrs=8: features 0-7 low, 8-21 high
    assert g["features.7.branch3.1.conv.weight"] == "low" and g["features.8.branch0.conv.weight"] == "high"
    assert {v for k, v in g.items() if k.startswith("features.0.")} == {"low"}
    assert g["last_linear.bias"] == "head"
    assert set(lr_groups(inception, 0).values()) == {"head", "high"}
    assert set(lr_groups(inception, 22).values()) == {"head", "low"}
    for bad in (-1, 23):
        with pytest.raises(ConfigError, match="TRANSFER.NUM_LOWLRS"):
            lr_groups(inception, bad)


def test_norm_parameter_names(resnet50):
    norms = norm_parameter_names(resnet50)
    assert "bn1.weight" in norms and "layer3.5.bn2.bias" in norms and "layer1.0.downsample.1.weight" in norms
    assert "layer1.0.downsample.0.weight" not in norms and "fc.weight" not in norms


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="MODEL.NAME 'vgg16' is not a transfer model"):
        create_model("vgg16")
