"""L2-SP on hand-built weights: pretrained blocks pulled to their starting values (alpha), new layers to zero
(beta), BatchNorm parameters and statistics never penalised; the reference code's hard-coded variant; the term
as the engine sees it (added to the loss, logged under its own name) and its gradient."""
import numpy as np
import paddle
import pytest

from common.engine.losses import ClassificationLoss
from transfer.config import get_config
from transfer.l2sp import L2SP
from transfer.method import TransferMethod
from transfer.model import create_model

W0, W1, BN_VALUE = 0.1, 0.4, 7.0
# resnet18 body: stem, layer1.0, layer1.1, layer2.0, layer2.1, layer3.0, layer3.1, layer4.0, layer4.1


def is_bn(name):
    return name.startswith("bn1.") or ".bn" in name or ".downsample.1." in name


def fill(model, value, bn_value):
    for name, p in model.named_parameters():
        if p.stop_gradient:        # BatchNorm statistics: arbitrary values, must not matter
            p.set_value(np.full(p.shape, 3.0 if name.endswith("_variance") else -2.0, dtype="float32"))
        else:
            p.set_value(np.full(p.shape, bn_value if is_bn(name) else value, dtype="float32"))


def sizes(model, select):
    return sum(int(np.prod(p.shape)) for n, p in model.named_parameters()
               if not p.stop_gradient and not is_bn(n) and select(n))


@pytest.fixture()
def model():
    paddle.seed(0)
    m = create_model("resnet18", num_classes=3)
    fill(m, W0, 1.0)
    return m


def test_paper_mode_value(model):
    penalty = L2SP(model, new_layers=2, num_lowlrs=3, alpha=0.02, alpha_high=0.005, beta=0.001, mode="paper")
    fill(model, W1, BN_VALUE)           # every weight moved by 0.3; BatchNorm moved too (ignored)
    new = ("fc.", "layer4.1.")
    low = ("conv1.", "layer1.0.", "layer1.1.")
    n_new = sizes(model, lambda n: n.startswith(new))
    n_low = sizes(model, lambda n: n.startswith(low))
    n_high = sizes(model, lambda n: not n.startswith(new + low))
    assert n_new and n_low and n_high
    d = W1 - W0
    want = 0.001 / 2 * W1 ** 2 * n_new + 0.02 / 2 * d ** 2 * n_low + 0.005 / 2 * d ** 2 * n_high
    got = float(penalty(model))
    assert got == pytest.approx(want, rel=1e-5)

    # without an LR split every pretrained block uses alpha; the unmoved model costs only the new layers' beta term
    penalty = L2SP(model, new_layers=1, alpha=0.02, beta=0.001)
    assert float(penalty(model)) == pytest.approx(0.001 / 2 * W1 ** 2 * sizes(model, lambda n: n.startswith("fc.")),
                                                  rel=1e-5)
    fill(model, W0, 1.0)
    n_fc = sizes(model, lambda n: n.startswith("fc."))
    want = 0.02 / 2 * (W0 - W1) ** 2 * sizes(model, lambda n: not n.startswith("fc.")) + 0.001 / 2 * W0 ** 2 * n_fc
    assert float(penalty(model)) == pytest.approx(want, rel=1e-5)


def test_reference_mode_value(model):
    """The reference: 0.004 * (10 x the first low-block term + 5 x the others) + 0.0005 x every zero-pull term;
    its top N blocks (one more than it re-initialises) and the upper pretrained blocks are pulled to zero."""
    penalty = L2SP(model, new_layers=1, num_lowlrs=3, alpha=123.0, beta=456.0, mode="reference")  # rates unused
    fill(model, W1, BN_VALUE)
    low = ("conv1.", "layer1.0.", "layer1.1.")
    n_first = sizes(model, lambda n: n == "conv1.weight")
    n_low = sizes(model, lambda n: n.startswith(low)) - n_first
    n_zero = sizes(model, lambda n: not n.startswith(low))   # fc, layer4.1 (the off-by-one) and the upper blocks
    d = W1 - W0
    want = 0.004 * (10 * d ** 2 / 2 * n_first + 5 * d ** 2 / 2 * n_low) + 0.0005 * W1 ** 2 / 2 * n_zero
    assert float(penalty(model)) == pytest.approx(want, rel=1e-5)


def test_gradient_pulls_towards_the_right_targets(model):
    penalty = L2SP(model, new_layers=2, num_lowlrs=3, alpha=0.02, alpha_high=0.005, beta=0.001)
    fill(model, W1, BN_VALUE)
    penalty(model).backward()
    grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    np.testing.assert_allclose(grads["conv1.weight"], 0.02 * (W1 - W0), rtol=1e-5)        # low: alpha (w - w0)
    np.testing.assert_allclose(grads["layer3.0.conv1.weight"], 0.005 * (W1 - W0), rtol=1e-5)  # high: alpha_high
    np.testing.assert_allclose(grads["layer4.1.conv2.weight"], 0.001 * W1, rtol=1e-5)     # new block: beta w
    np.testing.assert_allclose(grads["fc.bias"], 0.001 * W1, rtol=1e-5)
    for name in ("bn1.weight", "layer2.0.bn2.bias", "layer2.0.downsample.1.weight"):
        assert name not in grads or not np.any(grads[name]), name


def test_method_adds_and_reports_the_term(model):
    cfg = get_config()
    cfg.MODEL.NAME, cfg.MODEL.NUM_CLASSES, cfg.MODEL.PRETRAINED = "resnet18", 3, "given"
    cfg.TRANSFER.L2SP.ENABLE = True
    cfg.TRANSFER.L2SP.ALPHA, cfg.TRANSFER.L2SP.BETA = 0.02, 0.001
    cfg.freeze()
    method = TransferMethod()
    logs = []
    method.prepare_training(cfg, model, logs.append)     # re-initialises fc, snapshots w0
    assert any("L2-SP on" in line for line in logs)
    fill_except_fc = {n: p for n, p in model.named_parameters() if not p.stop_gradient and not n.startswith("fc.")}
    for n, p in fill_except_fc.items():
        p.set_value(np.full(p.shape, BN_VALUE if is_bn(n) else W1, dtype="float32"))
    logits = paddle.to_tensor([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]])   # any outputs: the term depends on weights
    y = paddle.to_tensor([0, 2])
    criterion = ClassificationLoss(3)
    total, terms = method.loss(criterion, logits, y, model)
    fc = dict(model.named_parameters())
    fc_sq = float((fc["fc.weight"] ** 2).sum() + (fc["fc.bias"] ** 2).sum())
    want = 0.02 / 2 * (W1 - W0) ** 2 * sizes(model, lambda n: not n.startswith("fc.")) + 0.001 / 2 * fc_sq
    assert float(terms["l2sp"]) == pytest.approx(want, rel=1e-5)
    assert float(total) == pytest.approx(float(criterion(logits, y)) + want, rel=1e-5)

    off = TransferMethod()
    cfg2 = get_config()
    cfg2.MODEL.NAME, cfg2.MODEL.NUM_CLASSES = "resnet18", 3
    off.prepare_training(cfg2, model, logs.append)
    total, terms = off.loss(criterion, logits, y, model)
    assert terms == {} and float(total) == pytest.approx(float(criterion(logits, y)))
