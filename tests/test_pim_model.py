"""PIM model: the selector against brute force, every module switch forward and backward, the loss terms on
hand-built logits, the evaluation heads, feature geometry of every backbone family, and config errors."""
import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

from common.cli import build_parser, config_from_args  # noqa: E402
from common.config import ConfigError  # noqa: E402
from common.data.transforms import SquareResize  # noqa: E402
from pim.method import PIMMethod, RandomGaussianBlur, gaussian_blur  # noqa: E402
from pim.model import build_pim, create_backbone  # noqa: E402
from pim.pim_module import (gather_tokens, head_logits, highest_k, pim_loss, select_tokens,  # noqa: E402
                            sum_of_softmax)

TINY_SWIN = dict(patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=3)
LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def brute_force_selection(logits, n):
    """Per sample: tokens sorted by (largest softmax probability descending, token index ascending)."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    conf = (e / e.sum(-1, keepdims=True)).max(-1)
    keep, drop = [], []
    for c in conf:
        order = sorted(range(len(c)), key=lambda i: (-c[i], i))
        keep.append(order[:n])
        drop.append(order[n:])
    return np.array(keep), np.array(drop)


# ------------------------------------------------------------------------------------------------------ selector
@pytest.mark.parametrize("ties", [False, True])
def test_selector_matches_brute_force_top_k(ties):
    rng = np.random.RandomState(3)
    logits = rng.randn(5, 37, 6).astype(np.float32) * 2
    if ties:  # identical tokens share their confidence bit for bit: the lower token index must go first
        logits[:, 10:20] = logits[:, 0:1]
        logits[:, 30:33] = logits[:, 25:26]
    for n in (1, 7, 36, 37):
        keep, drop = select_tokens(paddle.to_tensor(logits), n)
        keep, drop = keep.numpy(), drop.numpy()
        assert keep.shape == (5, n) and drop.shape == (5, 37 - n)
        for k, d in zip(keep, drop):
            assert len(set(k)) == n and sorted(np.concatenate([k, d]).tolist()) == list(range(37))
        bk, bd = brute_force_selection(logits.astype(np.float64), n)
        np.testing.assert_array_equal(keep, bk)
        np.testing.assert_array_equal(drop, bd.reshape(5, 37 - n))


def test_selected_logits_are_the_most_confident_in_order():
    rng = np.random.RandomState(4)
    logits = paddle.to_tensor(rng.randn(3, 20, 5).astype(np.float32))
    keep, drop = select_tokens(logits, 6)
    sel = gather_tokens(logits, keep).numpy()
    conf_sel = F.softmax(paddle.to_tensor(sel), axis=-1).max(-1).numpy()
    conf_drop = F.softmax(gather_tokens(logits, drop), axis=-1).max(-1).numpy()
    assert (np.diff(conf_sel, axis=1) <= 0).all()               # most confident first
    assert (conf_sel.min(axis=1) >= conf_drop.max(axis=1)).all()  # every kept token beats every dropped one


# ------------------------------------------------------------------------------------------- switches, backward
SWITCHES = [(True, True, True), (True, True, False), (True, False, False), (False, True, True),
            (False, True, False), (False, False, False)]


@pytest.mark.parametrize("backbone,size,kwargs,selects", [
    ("swin_tiny_patch4_window7_224", 96, TINY_SWIN, [40, 16, 6, 4]),
    ("efficientnet_b0", 72, dict(width_mult=0.25, depth_mult=0.3), [16, 8, 8, 4]),
])
def test_every_switch_runs_forward_and_backward(backbone, size, kwargs, selects):
    paddle.seed(0)
    x = paddle.randn([2, 3, size, size])
    y = paddle.to_tensor([1, 3])
    for fpn, sel, comb in SWITCHES:
        model = build_pim(backbone, 5, img_size=size, use_fpn=fpn, fpn_size=16, use_selection=sel,
                          num_selects=selects, use_combiner=comb, backbone_kwargs=kwargs, drop_path=0.0)
        model.train()
        out = model(x)
        if not (fpn or sel or comb):
            assert list(out) == ["ori_out"]
        else:
            assert all(out[n].shape[0] == 2 and out[n].shape[-1] == 5 for n in LAYERS)
            assert ("select_layer1" in out) == sel and ("comb_outs" in out) == comb
            if sel:
                assert [out["select_" + n].shape[1] for n in LAYERS] == selects
        loss, terms = pim_loss(out, y, model.layer_names, lambda_s=1.0)
        assert math.isfinite(float(loss))
        loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
        no_grad = [n for n, p in trainable if p.grad is None]
        assert not no_grad, (fpn, sel, comb, no_grad[:5])
        moved = sum(float(p.grad.abs().sum()) > 0 for _, p in trainable)
        assert moved > 0.9 * len(trainable), (fpn, sel, comb)
        heads = head_logits(out, model.layer_names)
        assert list(heads) == model.head_names()
        for h in heads.values():
            assert h.shape == [2, 5]


def test_combiner_without_selector_and_too_few_tokens_are_config_errors():
    method = PIMMethod()
    base = ["MODEL.NAME", "swin_tiny_patch4_window7_224", "DATA.IMAGE_SIZE", "96", "MODEL.NUM_CLASSES", "5",
            "MODEL.PIM.FPN_SIZE", "16", "MODEL.PIM.SWIN.PATCH_SIZE", "4", "MODEL.PIM.SWIN.EMBED_DIM", "16",
            "MODEL.PIM.SWIN.DEPTHS", "[2,2,2,2]", "MODEL.PIM.SWIN.NUM_HEADS", "[1,2,4,8]",
            "MODEL.PIM.SWIN.WINDOW_SIZE", "3"]

    def cfg(*extra):
        return config_from_args(build_parser().parse_args(["-opts", *base, *extra]), method.get_config())

    with pytest.raises(ConfigError, match="USE_COMBINER needs USE_SELECTION"):
        method.build_model(cfg("MODEL.PIM.USE_SELECTION", "False", "MODEL.PIM.NUM_SELECTS", "[8,8,8,8]"))
    with pytest.raises(ConfigError, match="layer3 is 20, but that level has 9 tokens"):
        method.build_model(cfg("MODEL.PIM.NUM_SELECTS", "[40,16,20,4]"))
    with pytest.raises(ConfigError, match="at least 32"):
        method.build_model(cfg("MODEL.PIM.NUM_SELECTS", "[8,8,4,4]"))
    with pytest.raises(ConfigError, match="3 entries for 4 feature levels"):
        method.build_model(cfg("MODEL.PIM.NUM_SELECTS", "[40,16,4]"))
    with pytest.raises(ConfigError, match="MAIN_HEAD 'combiner' is not one of"):
        method.build_model(cfg("MODEL.PIM.USE_COMBINER", "False", "MODEL.PIM.MAIN_HEAD", "combiner",
                               "MODEL.PIM.NUM_SELECTS", "[40,16,4,4]"))
    model = method.build_model(cfg("MODEL.PIM.NUM_SELECTS", "[40,16,4,4]", "MODEL.PIM.HIGHEST_K", "[2]"))
    assert method.main_head_of(model) == "combiner" and model.head_names()[-2:] == ["combiner", "sum"]
    bare = method.build_model(cfg("MODEL.PIM.USE_FPN", "False", "MODEL.PIM.USE_SELECTION", "False",
                                  "MODEL.PIM.USE_COMBINER", "False"))
    assert method.main_head_of(bare) == "original"
    assert method.main_head_of(model) == "combiner"    # each model keeps its own settings
    with pytest.raises(ConfigError, match="unknown PIM backbone 'swin_huge'"):
        method.build_model(cfg("MODEL.NAME", "swin_huge"))


# --------------------------------------------------------------------------------------------------------- losses
def test_loss_terms_on_hand_built_logits():
    rng = np.random.RandomState(5)
    b, c = 3, 4
    y = np.array([0, 2, 3])
    out_np = {}
    for name, s in zip(LAYERS, (6, 4, 3, 2)):
        out_np[name] = rng.randn(b, s, c)
    for name, (n_sel, n_drop) in zip(LAYERS, ((2, 4), (2, 2), (1, 2), (1, 1))):
        out_np["select_" + name] = rng.randn(b, n_sel, c)
        out_np["drop_" + name] = rng.randn(b, n_drop, c) * 3
    out_np["comb_outs"] = rng.randn(b, c)

    def ce(logits, labels):
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -logp[np.arange(len(labels)), labels].mean()

    exp_b = sum(ce(out_np[n].mean(1), y) for n in LAYERS)
    exp_s = sum(ce(out_np["select_" + n].reshape(-1, c), np.repeat(y, out_np["select_" + n].shape[1]))
                for n in LAYERS)
    exp_n = sum(((np.tanh(out_np["drop_" + n]) + 1) ** 2).mean() for n in LAYERS)
    exp_c = ce(out_np["comb_outs"], y)
    out = {k: paddle.to_tensor(v.astype(np.float32)) for k, v in out_np.items()}
    total, terms = pim_loss(out, paddle.to_tensor(y), LAYERS, lambda_b=0.5, lambda_s=2.0, lambda_n=5.0,
                            lambda_c=1.5)
    assert float(terms["loss_b"]) == pytest.approx(0.5 * exp_b, rel=1e-5)
    assert float(terms["loss_s"]) == pytest.approx(2.0 * exp_s, rel=1e-5)
    assert float(terms["loss_n"]) == pytest.approx(5.0 * exp_n, rel=1e-5)
    assert float(terms["loss_c"]) == pytest.approx(1.5 * exp_c, rel=1e-5)
    assert float(total) == pytest.approx(0.5 * exp_b + 2 * exp_s + 5 * exp_n + 1.5 * exp_c, rel=1e-5)
    # the paper's weights: lambda_s = 0 means no selected-token term at all
    _, terms = pim_loss(out, paddle.to_tensor(y), LAYERS)
    assert sorted(terms) == ["loss_b", "loss_c", "loss_n"]
    # soft (one-hot) targets, as mixup would give, through a soft-target criterion: the same numbers
    from common.engine.losses import ClassificationLoss
    soft = paddle.to_tensor(np.eye(c, dtype=np.float32)[y])
    total_soft, _ = pim_loss(out, soft, LAYERS, lambda_s=2.0, criterion=ClassificationLoss(c))
    total_hard, _ = pim_loss(out, paddle.to_tensor(y), LAYERS, lambda_s=2.0, criterion=ClassificationLoss(c))
    assert float(total_soft) == pytest.approx(float(total_hard), rel=1e-5)
    # an all-zero drop term only when every dropped logit is very negative
    out["drop_layer1"] = paddle.full([b, 4, c], -30.0)
    _, t1 = pim_loss({k: v for k, v in out.items() if not k.startswith("drop_") or k == "drop_layer1"},
                     paddle.to_tensor(y), LAYERS)
    assert float(t1["loss_n"]) < 1e-6


def test_heads_sum_and_highest_k():
    rng = np.random.RandomState(6)
    a = rng.randn(4, 5).astype(np.float32) * 3
    b = rng.randn(4, 5).astype(np.float32) * 0.1   # a hesitant head
    pa, pb = F.softmax(paddle.to_tensor(a)).numpy(), F.softmax(paddle.to_tensor(b)).numpy()
    s = sum_of_softmax([paddle.to_tensor(a), paddle.to_tensor(b)]).numpy()
    np.testing.assert_allclose(np.exp(s), (pa + pb) / 2, rtol=1e-5)
    h1 = np.exp(highest_k([paddle.to_tensor(a), paddle.to_tensor(b)], 1).numpy())
    np.testing.assert_allclose(h1, pa, rtol=1e-5)  # the most confident head, not the least (reference bug)
    out = {n: paddle.to_tensor(rng.randn(2, 3, 5).astype(np.float32)) for n in LAYERS}
    out["comb_outs"] = paddle.to_tensor(rng.randn(2, 5).astype(np.float32))
    heads = head_logits(out, LAYERS, highest=(2,))
    assert list(heads) == LAYERS + ["combiner", "sum", "highest-2"]
    np.testing.assert_allclose(heads["layer2"].numpy(), out["layer2"].numpy().mean(1), rtol=1e-6)


# ------------------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("name,size,kwargs", [
    ("swin_tiny_patch4_window7_224", 96, TINY_SWIN),
    ("resnet18", 70, {}),
    ("vit_base_patch16_224", 48, dict(embed_dim=16, depth=5, num_heads=2)),
    ("efficientnet_b0", 70, dict(width_mult=0.25, depth_mult=0.3)),
])
def test_declared_feature_geometry_matches_the_outputs(name, size, kwargs):
    net, infos = create_backbone(name, size, **kwargs)
    net.eval()
    with paddle.no_grad():
        feats = net.stage_features(paddle.randn([1, 3, size, size])) if hasattr(net, "stage_features") else \
            net(paddle.randn([1, 3, size, size]))
    for f, info in zip(feats, infos):
        if info.kind == "map":
            assert list(f.shape) == [1, info.channels, *info.grid]
        else:
            assert list(f.shape) == [1, info.tokens, info.channels]


def test_odd_sized_cnn_levels_merge_bilinearly():
    """EfficientNet at 70 px: levels 5x5 and 3x3 (not an exact factor 2; the reference's fixed x2 would fail)."""
    model = build_pim("efficientnet_b0", 3, img_size=70, fpn_size=8, num_selects=[16, 16, 4, 4],
                      backbone_kwargs=dict(width_mult=0.25, depth_mult=0.3))
    model.eval()
    with paddle.no_grad():
        out = model(paddle.randn([1, 3, 70, 70]))
    assert [out[n].shape[1] for n in LAYERS] == [25, 25, 9, 9]


def test_vit_position_embedding_resize_matches_scipy_zoom():
    ndimage = pytest.importorskip("scipy.ndimage")
    from common.backbones.vit import resize_pos_embed
    pe = np.random.RandomState(7).randn(1, 1 + 14 * 14, 6).astype(np.float32)
    out = resize_pos_embed(pe, 1 + 28 * 28)
    grid = ndimage.zoom(pe[0, 1:].reshape(14, 14, 6), (2, 2, 1), order=1)
    np.testing.assert_allclose(out[0, 1:], grid.reshape(-1, 6), atol=1e-5)
    np.testing.assert_array_equal(out[0, 0], pe[0, 0])


# ----------------------------------------------------------------------------------------------------- transforms
def test_pim_train_extras_and_square_resize():
    from PIL import Image
    img = Image.fromarray(np.random.RandomState(8).randint(0, 255, (30, 50, 3), dtype=np.uint8))
    assert SquareResize(40)(img).size == (40, 40)
    blurred = np.asarray(gaussian_blur(img, 5, 2.0), dtype=np.float64)
    assert blurred.std() < np.asarray(img, dtype=np.float64).std()
    assert RandomGaussianBlur(prob=0.0)(img) is img
    method = PIMMethod()
    cfg = config_from_args(build_parser().parse_args(
        ["-opts", "DATA.SQUARE_RESIZE", "True", "AUG.TRAIN_RESIZE", "60", "DATA.IMAGE_SIZE", "48",
         "DATA.RESIZE_SIZE", "60"]), method.get_config())
    t = method.train_transform(cfg)
    assert type(t.steps[0]).__name__ == "SquareResize"
    assert t(img).shape == (3, 48, 48) and method.eval_transform(cfg)(img).shape == (3, 48, 48)


# ------------------------------------------------------------------------------------------ engine: top-k per head
def test_evaluate_reports_configured_top_k_for_every_head():
    """common/engine/trainer.py evaluate with EVAL.TOPK: exact counts per head for each k."""
    from common.config import get_default_config
    from common.engine.trainer import evaluate
    from common.method import ClassificationMethod

    rng = np.random.RandomState(9)
    logits = {"a": rng.randn(10, 6).astype(np.float32), "b": rng.randn(10, 6).astype(np.float32)}
    labels = rng.randint(0, 6, 10)

    class TwoHeads(ClassificationMethod):
        def main_head_of(self, model):
            return "a"

        def eval_heads(self, model, outputs):
            return outputs

    class Lookup(paddle.nn.Layer):
        def forward(self, images):
            idx = images.numpy().astype(int).reshape(-1)
            return {k: paddle.to_tensor(v[idx]) for k, v in logits.items()}

    loader = [(paddle.to_tensor(np.arange(i, i + 5, dtype=np.float32)), paddle.to_tensor(labels[i:i + 5]))
              for i in (0, 5)]
    cfg = get_default_config()
    cfg.MODEL.NUM_CLASSES = 6
    cfg.EVAL.TOPK = [3, 5, 9]
    m = evaluate(Lookup(), TwoHeads(), loader, cfg)
    for head, prefix in (("a", ""), ("b", "b/")):
        ranks = np.argsort(-logits[head], axis=1)
        for k in (1, 3, 5, 6):  # 9 is capped at the 6 classes
            want = 100.0 * np.mean([labels[i] in ranks[i, :k] for i in range(10)])
            assert m[f"{prefix}top{k}"] == pytest.approx(want), (head, k)
    assert "top9" not in m and m["count"] == 10


# -------------------------------------------------------------------------------------------------------- configs
def test_configs_parse_and_carry_the_papers_settings():
    method = PIMMethod()
    folder = os.path.join(REPO, "configs", "pim")

    def load(name):
        return config_from_args(build_parser().parse_args(["-cfg", os.path.join(folder, name)]), method.get_config())

    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert {"cub_swin_large_384.yaml", "nabirds_swin_large_384.yaml", "cub_resnet50_448.yaml",
            "demo.yaml"} <= set(names)
    for n in names:
        load(n)  # every file parses, its BASE included
    cub, nab = load("cub_swin_large_384.yaml"), load("nabirds_swin_large_384.yaml")
    for c, classes in ((cub, 200), (nab, 555)):
        p, t = c.MODEL.PIM, c.TRAIN
        assert c.MODEL.NAME == "swin_large_patch4_window12_384" and c.MODEL.NUM_CLASSES == classes
        assert (p.FPN_SIZE, list(p.NUM_SELECTS)) == (1536, [2048, 512, 128, 32])
        assert (p.LAMBDA_B, p.LAMBDA_S, p.LAMBDA_N, p.LAMBDA_C) == (0.5, 0.0, 5.0, 1.0)
        assert (t.OPTIMIZER.NAME, t.OPTIMIZER.NESTEROV, t.BASE_LR, t.WEIGHT_DECAY) == ("SGD", True, 5e-4, 5e-4)
        assert (t.EPOCHS, c.DATA.BATCH_SIZE, t.ACCUM_ITER, t.LR_SCHEDULER.NAME) == (50, 16, 2, "cosine")
        assert t.WARMUP_ITERS * t.ACCUM_ITER == 800   # 800 batches
        assert (c.AUG.TRAIN_RESIZE, c.DATA.IMAGE_SIZE, c.AUG.BLUR_PROB, c.AUG.SHARPEN_PROB) == (510, 384, 0.1, 0.1)
        assert c.AMP.ENABLE and c.AUG.MIXUP_PROB == 0 and c.TRAIN.SMOOTHING == 0
        assert list(c.EVAL.TOPK) == [3] and c.MODEL.PIM.MAIN_HEAD == "combiner"
    r50 = load("cub_resnet50_448.yaml")
    assert r50.MODEL.NAME == "resnet50" and r50.DATA.IMAGE_SIZE == 448


@pytest.mark.parametrize("layout", ["tokens", "maps", "strided"])
def test_gather_tokens_equals_take_along_axis_in_values_and_gradients(layout):
    """gather_tokens takes rows of the [B * S, D] view (contiguous tokens) or columns of the maps that transposed
    tokens come from (FPN levels of a CNN), and take_along_axis otherwise: all three give take_along_axis's values
    and gradients."""
    rng = np.random.RandomState(5)
    base = rng.randn(3, 8, 10).astype(np.float32)
    index = paddle.to_tensor(np.stack([rng.permutation(10)[:4] for _ in range(3)]).astype("int64"))
    dy = paddle.to_tensor(rng.randn(3, 4, 8).astype(np.float32))

    def tokens(leaf):
        if layout == "tokens":
            return leaf.transpose([0, 2, 1]) * 1.0           # contiguous [B, S, D]
        if layout == "maps":
            return leaf.transpose([0, 2, 1])                  # a view of the [B, D, S] maps
        return leaf.transpose([0, 2, 1])[:, :, ::2]           # strided every other way: the fallback
    ours, ref = (paddle.to_tensor(base, stop_gradient=False) for _ in range(2))
    t = tokens(ours)
    assert t.is_contiguous() == (layout == "tokens")
    got = gather_tokens(t, index)
    want = paddle.take_along_axis(tokens(ref), index.unsqueeze(-1), axis=1, broadcast=True)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    dy = dy[:, :, :got.shape[-1]]
    (got * dy).sum().backward()
    (want * dy).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), ref.grad.numpy(), rtol=0, atol=1e-6)
