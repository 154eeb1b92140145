import numpy as np
import paddle
import pytest

from resmlp.resmlp import RESMLP_ALIASES, create_resmlp, resmlp_arch

PAPER_PARAMS_M = {"resmlp_12_224": 15.4, "resmlp_24_224": 30.0, "resmlp_36_224": 44.7, "resmlp_big_24_224": 129.1}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_count_matches_paper(name):
    model = create_resmlp(name)
    count = sum(int(np.prod(p.shape)) for p in model.parameters())
    assert round(count / 1e6, 1) == PAPER_PARAMS_M[name]


def test_layer_scale_init_follows_paper():
    for name, value in (("resmlp_12_224", 0.1), ("resmlp_24_224", 1e-5), ("resmlp_36_224", 1e-6),
                        ("resmlp_big_24_224", 1e-6)):
        assert resmlp_arch(name)["init_values"] == value
    m = create_resmlp("resmlp_24_224", depth=1, num_classes=3)
    np.testing.assert_allclose(m.mixer_layers[0].ls1.numpy(), 1e-5)


def test_aliases_share_their_base_architecture():
    for alias, base in RESMLP_ALIASES.items():
        assert resmlp_arch(alias) == resmlp_arch(base)
    with pytest.raises(KeyError, match="unknown ResMLP variant"):
        resmlp_arch("resmlp_7")


def test_forward_shapes_and_eval_determinism():
    m = create_resmlp("resmlp_12_224", image_size=32, patch_size=8, embed_dim=16, depth=2, num_classes=5,
                      droppath=0.5, dropout=0.5)
    x = paddle.rand([3, 3, 32, 32])
    m.eval()
    a, b = m(x), m(x)
    assert a.shape == [3, 5]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="multiple of the patch size"):
        create_resmlp("resmlp_12_224", image_size=30, patch_size=8)


def test_token_mixing_acts_across_patches():
    """Changing one patch changes the features of every token position through linear_tokens."""
    paddle.seed(1)
    m = create_resmlp("resmlp_12_224", image_size=16, patch_size=8, embed_dim=8, depth=1, num_classes=0,
                      init_values=1.0)
    for p in m.parameters():
        p.set_value(paddle.randn(p.shape) * 0.5)
    m.eval()
    x = paddle.zeros([1, 3, 16, 16])
    y = x.clone()
    y[:, :, :8, :8] = 1.0
    tokens_x = m.mixer_layers(m.patch_embed(x))
    tokens_y = m.mixer_layers(m.patch_embed(y))
    changed = (tokens_x - tokens_y).abs().sum(axis=2).numpy()[0]
    assert (changed > 1e-6).all()
