"""Several learning rates: each parameter group follows its own rate at every step of the schedule (warm-up, step
decay), and one optimizer step on a fixed batch equals a PyTorch SGD step (Nesterov momentum, weight decay) on the
same groups."""
import numpy as np
import paddle
import pytest

from common.backbones.resnet import torchvision_resnet_rules
from common.engine.lr import build_scheduler
from common.engine.optim import build_optimizer
from common.porting import port_state_dict, seeded_input, seeded_state
from transfer.config import get_config
from transfer.method import TransferMethod
from transfer.model import create_model, lr_groups

LRS = [0.1, 0.03, 0.01]   # classifier, upper blocks, the 3 bottom blocks (stem, layer1.0, layer1.1)


def transfer_config(**train):
    cfg = get_config()
    cfg.MODEL.NAME, cfg.MODEL.NUM_CLASSES = "resnet18", 3
    cfg.TRAIN.BASE_LR = 0.1
    cfg.TRAIN.OPTIMIZER.NAME = "SGD"
    cfg.TRANSFER.NUM_LOWLRS = 3
    cfg.TRANSFER.LRS = list(LRS)
    for k, v in train.items():
        setattr(cfg.TRAIN, k, v)
    return cfg


def test_each_group_follows_its_rate_every_step():
    cfg = transfer_config(WARMUP_EPOCHS=1, WARMUP_START_LR=0.01, EPOCHS=3, WEIGHT_DECAY=0.0)
    cfg.TRAIN.OPTIMIZER.MOMENTUM = 0.0
    cfg.TRAIN.LR_SCHEDULER.NAME = "step"
    cfg.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 1
    cfg.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.5
    cfg.freeze()
    paddle.seed(0)
    model = create_model("resnet18", num_classes=3)
    method = TransferMethod()
    sched = build_scheduler(cfg, steps_per_epoch=2, total_batch=32)
    opt = build_optimizer(cfg, model, sched, method.lr_mult_fn(cfg, model))
    groups = lr_groups(model, 3)
    params = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    rng = np.random.RandomState(0)
    coef = {n: rng.uniform(0.5, 1.5, p.shape).astype("float32") for n, p in params}
    # base schedule by hand: warm-up 0.01 -> 0.1 over 2 steps, then 0.1 * 0.5 ** epoch
    base = [0.01, 0.055, 0.05, 0.05, 0.025, 0.025]
    for step, lr in enumerate(base):
        before = {n: p.numpy().copy() for n, p in params}
        loss = paddle.add_n([(p * paddle.to_tensor(coef[n])).sum() for n, p in params])   # gradient = coef
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched.step()
        for n, p in params:
            want_lr = lr * LRS[("head", "high", "low").index(groups[n])] / 0.1
            np.testing.assert_allclose(before[n] - p.numpy(), want_lr * coef[n], rtol=2e-4, atol=1e-8,
                                       err_msg=f"step {step} {n} ({groups[n]})")


def test_one_step_matches_torch_sgd_on_the_same_groups():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    cfg = transfer_config(WARMUP_EPOCHS=0, WEIGHT_DECAY=5e-4, SMOOTHING=0.0)
    cfg.TRAIN.OPTIMIZER.NESTEROV = True
    cfg.TRAIN.LR_SCHEDULER.NAME = "constant"
    cfg.freeze()

    ref = torchvision.models.resnet18(weights=None, num_classes=3)
    sd = ref.state_dict()
    src = seeded_state({k: tuple(v.shape) for k, v in sd.items()}, seed=5,
                       dtypes={k: str(v.dtype).replace("torch.", "") for k, v in sd.items()})
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in src.items()})
    model = create_model("resnet18", num_classes=3)
    ported, _ = port_state_dict(src, {k: tuple(v.shape) for k, v in model.state_dict().items()},
                                torchvision_resnet_rules())
    model.set_state_dict(ported)
    x = seeded_input((4, 3, 32, 32), seed=6)
    y = np.array([0, 2, 1, 2])

    # Paddle: the engine's optimizer with the method's multipliers
    method = TransferMethod()
    sched = build_scheduler(cfg, steps_per_epoch=1, total_batch=4)
    opt = build_optimizer(cfg, model, sched, method.lr_mult_fn(cfg, model))
    model.train()
    before = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    loss = paddle.nn.functional.cross_entropy(model(paddle.to_tensor(x)), paddle.to_tensor(y))
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    opt.step()
    after = {n: p.numpy() for n, p in model.named_parameters() if not p.stop_gradient}

    # torch: the same three groups, each split into decayed (conv / linear weights) and not decayed parts
    groups = lr_groups(model, 3)
    torch_groups = {}
    for name, p in ref.named_parameters():
        decay = p.ndim > 1
        g = torch_groups.setdefault((groups[name], decay), {"params": [], "names": []})
        g["params"].append(p)
        g["names"].append(name)
    topt = torch.optim.SGD([{"params": g["params"], "lr": LRS[("head", "high", "low").index(k[0])],
                             "weight_decay": 5e-4 if k[1] else 0.0} for k, g in torch_groups.items()],
                           lr=1.0, momentum=0.9, nesterov=True)
    ref.train()
    tloss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    topt.step()
    tafter = {n: p.detach().numpy() for n, p in ref.named_parameters()}
    assert float(loss) == pytest.approx(float(tloss.detach()), rel=1e-5)

    for name, w0 in before.items():
        ours, theirs = w0 - after[name], src[name] - tafter[name]
        if name == "fc.weight":            # Paddle Linear [in, out], torch [out, in]
            theirs = theirs.T
        scale = np.abs(theirs).max()
        assert scale > 0, name
        assert np.abs(ours - theirs).max() / scale < 1e-3, name
        # first Nesterov step: delta = lr * (1 + momentum) * (grad + wd * w)
        g = groups[name]
        wd = 5e-4 if w0.ndim > 1 else 0.0
        lr = LRS[("head", "high", "low").index(g)]
        want = lr * 1.9 * (grads[name] + wd * w0)
        # float32 differences w0 - w1 lose digits where the step is tiny next to the weight: absolute slack
        np.testing.assert_allclose(ours, want, rtol=1e-3, atol=1e-4 * np.abs(want).max(), err_msg=name)
    assert {groups[n] for n in before} == {"head", "high", "low"}
