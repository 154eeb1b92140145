"""Method objects hold no per-model state: what `build_model` / `prepare_training` decide lives on the model, so a
fresh method object scores and trains a model exactly as the one that built it, and two models built by one
method object keep their own settings (PIM's loss weights and heads, the L2-SP starting weights)."""
import numpy as np
import paddle
import pytest

from common.cli import build_parser, config_from_args
from common.engine.losses import ClassificationLoss
from common.engine.trainer import evaluate
from pim.method import PIMMethod
from pim.pim_module import head_logits, pim_loss
from transfer.l2sp import l2sp_plan
from transfer.method import TransferMethod

TINY_PIM = ["MODEL.NAME", "swin_tiny_patch4_window7_224", "DATA.IMAGE_SIZE", "64", "MODEL.NUM_CLASSES", "4",
            "MODEL.PIM.FPN_SIZE", "8", "MODEL.PIM.SWIN.PATCH_SIZE", "4", "MODEL.PIM.SWIN.EMBED_DIM", "8",
            "MODEL.PIM.SWIN.DEPTHS", "[1,1,1,1]", "MODEL.PIM.SWIN.NUM_HEADS", "[1,1,1,1]",
            "MODEL.PIM.SWIN.WINDOW_SIZE", "2", "MODEL.DROPPATH", "0.0", "MODEL.PIM.NUM_SELECTS", "[24,8,4,2]"]
# levels of this Swin: 256, 64, 16, 4 tokens
SETTINGS_A = ["MODEL.PIM.LAMBDA_B", "0.25", "MODEL.PIM.LAMBDA_S", "2.0", "MODEL.PIM.LAMBDA_N", "3.0",
              "MODEL.PIM.LAMBDA_C", "0.5", "MODEL.PIM.HIGHEST_K", "[2]", "MODEL.PIM.MAIN_HEAD", "sum"]
LAMBDAS_A = dict(lambda_b=0.25, lambda_s=2.0, lambda_n=3.0, lambda_c=0.5)


def config(method, *opts):
    return config_from_args(build_parser().parse_args(["-opts", *opts]), method.get_config())


@pytest.fixture(scope="module")
def pim_models():
    """Model A (non-default loss weights, a highest-2 head, main head 'sum') built first, then model B (defaults)
    by the same method object: B's build must not change what A's loss and heads are."""
    method = PIMMethod()
    paddle.seed(1)
    a = method.build_model(config(method, *TINY_PIM, *SETTINGS_A))
    b = method.build_model(config(method, *TINY_PIM))
    for m in (a, b):
        m.eval()
    x = paddle.to_tensor(np.random.RandomState(0).randn(3, 3, 64, 64).astype("float32"))
    return a, b, x


def test_fresh_pim_method_scores_and_trains_with_the_models_own_settings(pim_models):
    a, b, x = pim_models
    y = paddle.to_tensor([0, 3, 1])
    with paddle.no_grad():
        out_a, out_b = a(x), b(x)
    for method in (PIMMethod(), PIMMethod()):       # neither built A nor B
        heads = method.eval_heads(a, out_a)
        assert list(heads) == a.head_names() + ["highest-2"] and method.main_head_of(a) == "sum"
        want = head_logits(out_a, a.layer_names, [2])
        for name in want:
            np.testing.assert_array_equal(heads[name].numpy(), want[name].numpy())
        total, terms = method.loss(None, out_a, y, a)
        ref_total, ref_terms = pim_loss(out_a, y, a.layer_names, **LAMBDAS_A)
        assert set(terms) == {"loss_b", "loss_s", "loss_n", "loss_c"} == set(ref_terms)
        assert float(total) == pytest.approx(float(ref_total), rel=1e-6)
        # B: the paper's defaults (no selected-token term, no highest-k head, the combiner as main head)
        assert list(method.eval_heads(b, out_b)) == b.head_names() and method.main_head_of(b) == "combiner"
        _, terms_b = method.loss(None, out_b, y, b)
        assert set(terms_b) == {"loss_b", "loss_n", "loss_c"}
        ref_b, _ = pim_loss(out_b, y, b.layer_names, lambda_b=0.5, lambda_s=0.0, lambda_n=5.0, lambda_c=1.0)
        assert float(method.loss(None, out_b, y, b)[0]) == pytest.approx(float(ref_b), rel=1e-6)


def test_engine_evaluation_reports_each_models_main_head(pim_models):
    """common.engine.trainer.evaluate with a fresh method object: A's main head 'sum' is the unprefixed top-1."""
    a, b, x = pim_models
    labels = [0, 3, 1]
    loader = [(x, paddle.to_tensor(labels))]
    method = PIMMethod()
    cfg = config(method, *TINY_PIM, *SETTINGS_A)
    with paddle.no_grad():
        heads = head_logits(a(x), a.layer_names, [2])
    metrics = evaluate(a, method, loader, cfg)
    for name, prefix in (("sum", ""), ("combiner", "combiner/"), ("highest-2", "highest-2/")):
        want = 100.0 * np.mean(heads[name].numpy().argmax(1) == np.array(labels))
        assert metrics[f"{prefix}top1"] == pytest.approx(want), name
    assert "sum/top1" not in metrics and "highest-2/top1" not in evaluate(b, method, loader, cfg)


def test_pim_model_not_built_by_the_method_is_refused():
    from pim.model import build_from_config
    method = PIMMethod()
    model = build_from_config(config(method, *TINY_PIM))
    with pytest.raises(TypeError, match="PIMMethod.build_model"):
        method.main_head_of(model)


def test_l2sp_starting_weights_stay_with_their_model():
    """prepare_training of a second model (L2-SP off) does not switch off the first model's penalty, and a fresh
    method object's loss includes it."""
    method = TransferMethod()
    on = config(method, "MODEL.NAME", "resnet18", "MODEL.NUM_CLASSES", "3", "MODEL.PRETRAINED", "given",
                "TRANSFER.L2SP.ENABLE", "True", "TRANSFER.L2SP.ALPHA", "0.5", "TRANSFER.L2SP.BETA", "0.0")
    off = config(method, "MODEL.NAME", "resnet18", "MODEL.NUM_CLASSES", "3")
    paddle.seed(2)
    a, b = method.build_model(on), method.build_model(off)
    method.prepare_training(on, a, lambda line: None)
    method.prepare_training(off, b, lambda line: None)
    moved = {}
    for n, p in a.named_parameters():   # move every weight of A by 0.01 from its starting value
        if not p.stop_gradient:
            moved[n] = p.numpy().copy()
            p.set_value(p.numpy() + 0.01)
    logits, y = paddle.to_tensor([[0.5, -1.0, 2.0]]), paddle.to_tensor([2])
    criterion = ClassificationLoss(3)
    base = float(criterion(logits, y))
    t = on.TRANSFER
    plan = l2sp_plan(a, t.NEW_LAYERS, t.NUM_LOWLRS, t.L2SP.ALPHA, t.L2SP.ALPHA_HIGH, t.L2SP.BETA, t.L2SP.MODE)
    penalised = {n for n, _, anchored in plan if anchored}
    want = 0.5 / 2 * sum(0.01 ** 2 * moved[n].size for n in penalised)
    for fresh in (method, TransferMethod()):
        total, terms = fresh.loss(criterion, logits, y, a)
        assert float(terms["l2sp"]) == pytest.approx(want, rel=1e-3)
        assert float(total) == pytest.approx(base + want, rel=1e-5)
        total_b, terms_b = fresh.loss(criterion, logits, y, b)
        assert terms_b == {} and float(total_b) == pytest.approx(base)
