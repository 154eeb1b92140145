"""Training fidelity for transfer/: one training step of the suite's non-binary transfer recipe == one step of the
official code (XuyangSHEN/Non-binary-deep-transfer-learning-for-image-classification), and 20 steps agree.

The official numbers come from tests/fixtures/train_step/transfer/make_fixture.py, which runs the official L2-SP term,
optimizer with its three learning-rate groups, step schedule, mixup targets and loss unmodified, on a torchvision
ResNet-18 presented in the fork's 22-block Inception v4 layout (13 parameter-free placeholders + ResNet-18's 9 body
blocks; see that file for why and how). Same weights (seeded numpy recipe, BatchNorm statistics randomised), same
mixed batch, float32 on the CPU. The suite side is built through the code paths the trainer uses:
configs/transfer/inception_v4_recipe.yaml with MODEL.NAME resnet18, TransferMethod.build_model / prepare_training
(new layers, L2-SP snapshot) / lr_mult_fn / loss, common/engine build_scheduler / build_optimizer /
ClassificationLoss, common/data/mixup mixup_target, weights through transfer/port_weights.py RESNET_RULES.
Setting: TRANSFER.NEW_LAYERS 2, NUM_LOWLRS 4 (stem + layer1 + layer2.0 low), LRS [0.03, 0.01, 0.003], L2-SP on,
mixup (lam drawn from Beta(0.2, 0.2)) with smoothing 0.1, SGD Nesterov 0.9, weight decay 5e-4, the step at
iteration 49 = epoch 12 (rates x0.9 after the warm-up).

Compared as max|suite - official| / max|official| per tensor (TOL = 1e-5): the loss and each term (mixup
cross-entropy; hard-label smoothed cross-entropy; L2-SP 'reference' mode against the official term; L2-SP 'paper'
mode against the paper's formula on the same layout), logits, every parameter's gradient, every parameter after the
step, the momentum buffers, each group's learning rate, and the BatchNorm running mean. The fixture keeps every
element of tensors up to 128 elements and 64 seeded elements of larger ones, plus max|.|, sum and sum of squares
of each whole tensor (also compared); with TRANSFER_REF=/path/to/official/checkout every test also runs against
numbers regenerated live from the official code, on whole tensors.

Deliberate differences, shown on purpose:
- weight decay: the official optimizer decays every tensor, the suite exempts 1-D tensors and biases (README). The
  fixture holds both; test_one_step compares with the exempting form and measures the official one's offset,
  lr * (1 + momentum) * wd * w on exactly the 1-D tensors.
- schedule: the official warm-up steps once per epoch and starts every group from the absolute warm-up rate; the
  suite's ramps per iteration from rate x WARMUP_START_LR / BASE_LR (README). Equal at every epoch boundary after
  the warm-up (and for the classifier group throughout); the warm-up gap is measured in test_schedule.
- BatchNorm running variance: Paddle updates it with the biased batch variance, torch with the unbiased one (a
  framework difference outside the training step's parameters); measured in test_one_step, not hidden.
"""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import paddle  # noqa: E402

from common.data.mixup import mixup_target  # noqa: E402
from common.engine.losses import ClassificationLoss  # noqa: E402
from common.engine.lr import build_scheduler  # noqa: E402
from common.engine.optim import build_optimizer  # noqa: E402
from common.porting import port_state_dict  # noqa: E402
from transfer.l2sp import L2SP  # noqa: E402
from transfer.method import TransferMethod  # noqa: E402
from transfer.model import lr_groups  # noqa: E402
from transfer.port_weights import RESNET_RULES, paddle_key_to_torch  # noqa: E402
from tests.helpers import method_config, rel  # noqa: E402

FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "train_step", "transfer")
_spec = importlib.util.spec_from_file_location("transfer_step_fixture", os.path.join(FIXTURE_DIR, "make_fixture.py"))
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)

TOL = 1e-5
CURVE_TOL = 1e-5
# CROSS_CPU. The fixture was made, and the bounds below first met, on AMD EPYC machines (MKL's AVX2 kernels). On an
# Intel Xeon (AVX-512 kernels: other blockings, other rounding) the same suite code gives a curve that leaves the
# reference by 2.5e-5 within 10 steps and 6.6e-4 (one step, then back to 4e-5) within 20; weights and buffers stay
# within their bounds. A different kernel path is a nudge of the size of float32 rounding, and the 20-step curve of
# this network amplifies such nudges (FLOAT32_REASON), so the curve's bounds allow for it; a wrong recipe (the
# paper's L2-SP vs the code's, a learning rate of another group) moves the curve by more than 1e-2.
CURVE_TOL_10, CURVE_TOL_20 = 1e-4, 1e-3
# FLOAT32_REASON. Train-mode BatchNorm on a few samples (layer4 is 1 x 1 at 32 px, 16 per batch) makes float32
# gradients ill-conditioned: the official code's own float32 gradients differ from its float64 ones by up to 6.6e-6
# per tensor, its 20-step loss curve by up to 5.8e-5 (from step 10 on; <= 6e-7 before) and, after 20 steps, its
# weights by up to 7.2e-4 and its momentum buffers by up to 0.24 (median 0.068; buffers of BatchNorm shifts are sums
# that cancel). The fixture holds these gaps (make_fixture.py runs the official step and run again in float64).
# Two float32 implementations of the same computation may be up to twice as far apart as each is from float64, so
# gradients and momentum buffers after one step are bounded per tensor by TOL + 3 x that tensor's gap, the curve
# (TOL for its first 10 steps) and the state after 20 steps by TOL + 3 x the largest gap (rounding reaches
# different steps and tensors first in different implementations); the loss, its terms, the logits and the
# weights after one step stay at TOL.
RECIPE = os.path.join(REPO, "configs", "transfer", "inception_v4_recipe.yaml")
TINY = ["MODEL.NAME", "resnet18", "MODEL.NUM_CLASSES", str(mk.NUM_CLASSES), "MODEL.PRETRAINED", "",
        "DATA.IMAGE_SIZE", str(mk.IMG), "AMP.ENABLE", "False", "TRAIN.BASE_LR", str(mk.LRS[0]),
        "TRANSFER.NEW_LAYERS", str(mk.NEW_LAYERS), "TRANSFER.NUM_LOWLRS", str(mk.NUM_LOWLRS),
        "TRANSFER.LRS", str(list(mk.LRS)), "TRANSFER.L2SP.ENABLE", "True", "TRANSFER.L2SP.MODE", "reference",
        "TRANSFER.L2SP.ALPHA", str(mk.PAPER["alpha"]), "TRANSFER.L2SP.ALPHA_HIGH", str(mk.PAPER["alpha_high"]),
        "TRANSFER.L2SP.BETA", str(mk.PAPER["beta"])]
GROUPS = ("head", "high", "low")     # the official 'linear', 'high_layers', 'low_layers'


def recipe_config():
    return method_config(TransferMethod(), RECIPE, TINY)


# ---- the official numbers: the committed fixture, or regenerated live from a checkout
def load_fixture():
    d = np.load(os.path.join(FIXTURE_DIR, "transfer_step.npz"))
    shapes = {k: tuple(v) for k, v in json.loads(str(d["shapes"])).items()}
    index = mk.sample_index(shapes)
    ref = {"shapes": shapes, "index": index, "weight_stats": d["weight_stats"]}
    for k in ("logits", "schedule", "curve", "curve_ce", "lrs") + mk.SCALARS:
        ref[k] = d[k]
    ref["f64_gap"] = {k.split(".", 1)[1]: d[k] for k in d.files if k.startswith("f64_gap.")}
    for name in mk.TENSOR_SETS:
        keys, values, stats = d[f"{name}.keys"], d[f"{name}.values"], d[f"{name}.stats"]
        sizes = [len(index[k]) for k in keys]
        chunks = np.split(values, np.cumsum(sizes)[:-1])
        ref[name] = {k: (chunk, s) for k, chunk, s in zip(keys, chunks, stats)}
    return ref


def live_reference(root):
    result = mk.generate(root)
    index = {k: np.arange(int(np.prod(s))) for k, s in result["shapes"].items()}   # whole tensors
    ref = {"shapes": result["shapes"], "index": index, "schedule": result["schedule"], "curve": result["curve"],
           "curve_ce": result["curve_ce"], "logits": result["logits"],
           "lrs": np.array([[result[f"lrs_{t}"][g] for g in ("linear", "high_layers", "low_layers")]
                            for t in ("official", "suite")])}
    ref.update({k: result[k] for k in mk.SCALARS})
    ref["f64_gap"] = result["f64_gap"]
    weights = mk.draw_weights(result["shapes"])
    ref["weight_stats"] = np.stack([mk.summarize({k: weights[k]}, index)[k][1] for k in sorted(result["shapes"])])
    for name in mk.TENSOR_SETS:
        ref[name] = mk.summarize(result[name], index)
    return ref


@pytest.fixture(scope="module", params=["fixture", "live"])
def reference(request):
    if request.param == "live":
        root = os.environ.get("TRANSFER_REF")
        if not root:
            pytest.skip("set TRANSFER_REF to a checkout of the official repository to compare live")
        pytest.importorskip("torchvision")
        return live_reference(root)
    return load_fixture()


@pytest.fixture(scope="module")
def drawn(reference):
    weights = mk.draw_weights(reference["shapes"])
    return weights, mk.draw_anchors(weights), mk.draw_batches(1 + mk.CURVE_BATCHES)


def compare(paddle_tensors, ref_set, index):
    """{key: worst of (kept elements, max|.|, sum, sum of squares)}, each relative to the official tensor's scale."""
    assert set(paddle_tensors) == set(ref_set)
    out = {}
    for k, (values, stats) in ref_set.items():
        full = np.asarray(paddle_tensors[k], np.float64).reshape(-1)
        maxabs, total, sumsq = stats
        n = full.size
        diffs = [np.abs(full[index[k]] - values).max() / maxabs,
                 abs(np.abs(full).max() - maxabs) / maxabs,
                 abs(full.sum() - total) / np.sqrt(n * sumsq),      # sqrt(n sumsq) >= sum |.|
                 abs((full * full).sum() - sumsq) / sumsq]
        out[k] = float(max(diffs))
    return out


def report(kind, diffs):
    k = max(diffs, key=diffs.get)
    print(f"\n{kind:16s} max rel diff {diffs[k]:.2e} ({k}) over {len(diffs)} tensors")
    return diffs[k]


def rounding_bound(reference, kind, tol):
    """{tensor: tol + 3 x the official code's own float32-vs-float64 gap on it} (see FLOAT32_REASON)."""
    gaps = reference["f64_gap"][kind]
    return {k: tol + 3 * g for k, g in zip(sorted(reference["grad"]), gaps)}


def within(diffs, bounds):
    over = {k: (v, bounds[k]) for k, v in diffs.items() if v > bounds[k]}
    assert not over, over


# ---- the suite side
def port(model, state):
    """Load torchvision-named arrays through the suite's ResNet port rules (strict: every key filled once)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ported, _ = port_state_dict(state, shapes, RESNET_RULES)
    missing, unexpected = model.set_state_dict({k: np.asarray(v, np.float32) for k, v in ported.items()})
    assert not missing and not unexpected


def suite_setup(drawn, config=None):
    """(method, model, scheduler, optimizer, criterion, paper-mode L2SP) as the trainer sets them up, with the
    anchors loaded before prepare_training (w0 = the 'pretrained' weights) and the current weights after it."""
    weights, anchors, _ = drawn
    config = config or recipe_config()
    method = TransferMethod()
    model = method.build_model(config)
    port(model, {**weights, **anchors})
    method.prepare_training(config, model, log=lambda msg: None)     # re-initialises new layers, snapshots w0
    s = config.TRANSFER
    paper = L2SP(model, s.NEW_LAYERS, s.NUM_LOWLRS, s.L2SP.ALPHA, s.L2SP.ALPHA_HIGH, s.L2SP.BETA, "paper")
    port(model, weights)
    model.train()
    scheduler = build_scheduler(config, mk.STEPS_PER_EPOCH, mk.BATCH)
    optimizer = build_optimizer(config, model, scheduler, method.lr_mult_fn(config, model))
    criterion = ClassificationLoss(config.MODEL.NUM_CLASSES, config.TRAIN.SMOOTHING, config.TRAIN.SMOOTHING_MODE)
    return method, model, scheduler, optimizer, criterion, paper


def as_torch(model, what, optimizer=None):
    """{torchvision key: array in torch layout} of the trainable parameters' values / gradients / momentum."""
    out = {}
    for n, p in model.named_parameters():
        if p.stop_gradient:
            continue
        if what == "grad":
            if p.grad is None:      # e.g. BatchNorm under the L2-SP term alone
                continue
            value = p.grad.numpy()
        elif what == "weight":
            value = p.numpy()
        else:
            value = optimizer._accumulators["velocity"][p.name].numpy()
        k, v = paddle_key_to_torch(n, value)
        out[k] = v
    return out


def batch_norm_stats(model):
    out = {}
    for n, p in model.state_dict().items():
        k, v = paddle_key_to_torch(n, p.numpy())
        if "running" in k:
            out[k] = v
    return out


def forward_loss(method, model, criterion, x, y, lam, config):
    targets = mixup_target(paddle.to_tensor(y), config.MODEL.NUM_CLASSES, lam=lam, smoothing=config.TRAIN.SMOOTHING)
    logits = model(paddle.to_tensor(x))
    loss, terms = method.loss(criterion, logits, targets, model)
    return logits, loss, terms


def group_rates(config, model, optimizer):
    """{'head' | 'high' | 'low': the learning rate its parameters get at the optimizer's current step}."""
    mult = TransferMethod().lr_mult_fn(config, model)
    out = {}
    for n, g in lr_groups(model, config.TRANSFER.NUM_LOWLRS).items():
        out.setdefault(g, set()).add(optimizer.get_lr() * mult(n))
    assert all(len(v) == 1 for v in out.values())
    return {g: v.pop() for g, v in out.items()}


# ---- tests
def test_recipe_settings():
    """The fixture's constants are the recipe's (so the official code ran the suite's recipe)."""
    c = recipe_config()
    t = c.TRAIN
    assert (t.OPTIMIZER.NAME.lower(), t.OPTIMIZER.MOMENTUM, t.OPTIMIZER.NESTEROV) == ("sgd", mk.MOMENTUM, True)
    assert (t.WEIGHT_DECAY, t.SMOOTHING, t.SMOOTHING_MODE) == (mk.WEIGHT_DECAY, mk.SMOOTHING, "uniform")
    assert (t.WARMUP_EPOCHS, t.WARMUP_START_LR, t.LINEAR_SCALED_LR) == (mk.WARMUP_EPOCHS, mk.WARMUP_LR, 0)
    assert (t.LR_SCHEDULER.NAME, t.LR_SCHEDULER.DECAY_EPOCHS, t.LR_SCHEDULER.DECAY_RATE) == \
        ("step", mk.DECAY_EPOCHS, mk.DECAY_RATE)
    assert (c.AUG.MIXUP_ALPHA, c.AUG.CUTMIX_ALPHA, c.AUG.MIXUP_MODE) == (0.2, 0.0, "batch")   # Beta(0.2, 0.2) lam
    assert (t.GRAD_CLIP, c.MODEL.DROPOUT) == (0, 0.0)


def test_weight_recipe(reference, drawn):
    """The numpy recipe still draws the weights the official code was run with."""
    weights = drawn[0]
    stats = np.stack([mk.summarize({k: weights[k]}, {k: np.arange(weights[k].size)})[k][1] for k in sorted(weights)])
    assert sorted(weights) == sorted(reference["shapes"])
    assert np.abs(stats - reference["weight_stats"]).max() <= 1e-9 * np.abs(reference["weight_stats"]).max()


def test_loss_terms(reference, drawn):
    method, model, scheduler, optimizer, criterion, paper = suite_setup(drawn)
    config = recipe_config()
    x, y, lam = drawn[2][0]
    logits, loss, terms = forward_loss(method, model, criterion, x, y, lam, config)
    ce = float(loss) - float(terms["l2sp"])
    hard = float(criterion(paddle.to_tensor(reference["logits"]), paddle.to_tensor(y)))
    paper_value = paper(model)
    paper_value.backward()
    paper_grads = {k: v for k, v in as_torch(model, "grad").items() if k in reference["l2sp_paper_grad"]}
    r = {"logits": rel(logits.numpy(), reference["logits"]), "ce (mixup, smoothing)": rel(ce, reference["ce"]),
         "ce (hard, smoothing)": rel(hard, reference["ce_hard"]),
         "l2sp reference mode": rel(float(terms["l2sp"]), reference["l2sp_reference"]),
         "l2sp paper mode": rel(float(paper_value), reference["l2sp_paper"]),
         "loss": rel(float(loss), reference["loss"]),
         "l2sp paper grad": report("l2sp paper grad", compare(paper_grads, reference["l2sp_paper_grad"],
                                                              reference["index"]))}
    print("\n" + "\n".join(f"{k:24s} {v:.2e}" for k, v in r.items()))
    print(f"official: ce {reference['ce']:.7f}, l2sp {reference['l2sp_reference']:.7f}, "
          f"paper-mode l2sp {reference['l2sp_paper']:.7f}")
    assert max(r.values()) <= TOL, r
    # the reference mode is the official term (first low tensor x10, the top NEW_LAYERS blocks and the pretrained
    # upper blocks pulled to zero), which the paper mode deliberately is not: measured 2.0855 vs 0.6315
    assert abs(reference["l2sp_reference"] - reference["l2sp_paper"]) > 0.5 * reference["l2sp_paper"]


def one_step(drawn):
    config = recipe_config()
    method, model, scheduler, optimizer, criterion, _ = suite_setup(drawn, config)
    scheduler.step(mk.STEP_ITER)
    rates = group_rates(config, model, optimizer)
    x, y, lam = drawn[2][0]
    _, loss, _ = forward_loss(method, model, criterion, x, y, lam, config)
    loss.backward()
    grads = as_torch(model, "grad")
    optimizer.step()
    return config, rates, grads, as_torch(model, "weight"), as_torch(model, "buf", optimizer), batch_norm_stats(model)


def test_one_step(reference, drawn):
    config, rates, grads, w1, buf, bn = one_step(drawn)
    index = reference["index"]
    official_rates = dict(zip(GROUPS, reference["lrs"][0]))
    assert rel([rates[g] for g in GROUPS], [official_rates[g] for g in GROUPS]) <= 1e-12, (rates, official_rates)
    bound = rounding_bound(reference, "grad", TOL)
    grad_diffs, buf_diffs = compare(grads, reference["grad"], index), compare(buf, reference["buf_suite"], index)
    report("grad", grad_diffs)
    report("momentum buffer", buf_diffs)
    within(grad_diffs, bound)
    within(buf_diffs, bound)      # after one step the buffer is the gradient + weight decay
    worst = {"weight after step": report("weight after step", compare(w1, reference["w1_suite"], index))}
    means = {k: v for k, v in bn.items() if k.endswith("running_mean")}
    worst["bn running mean"] = report("bn running mean", compare(
        means, {k: v for k, v in reference["bn_stats"].items() if k.endswith("running_mean")}, index))

    # the step itself, w1 - w0, on the kept elements: float32 rounding of w1 (2 ulps; torch rounds twice, w + buf
    # update) is not counted as a mismatch
    weights = drawn[0]
    update = {}
    for k, (values, stats) in reference["w1_suite"].items():
        w0 = weights[k].reshape(-1)[index[k]].astype(np.float64)
        ours, ref = w1[k].reshape(-1)[index[k]] - w0, values.astype(np.float64) - w0
        allow = 2 * np.spacing(np.abs(values)).astype(np.float64)
        update[k] = float(np.maximum(np.abs(ours - ref) - allow, 0).max() / np.abs(ref).max())
    worst["update w1 - w0"] = report("update w1 - w0", update)
    print(f"group rates at iteration {mk.STEP_ITER}: {rates}")
    assert max(worst.values()) <= TOL, worst

    # weight decay, deliberate: the official optimizer also decays the 1-D tensors (BatchNorm, classifier bias),
    # which moves them by lr * (1 + momentum) * wd * w more in a first Nesterov step; every other tensor is equal.
    # Both official forms ran on the same gradients, so their difference is the decay term alone.
    model = TransferMethod().build_model(recipe_config())
    name_group = {paddle_key_to_torch(n, np.zeros(1))[0]: g for n, g in lr_groups(model, mk.NUM_LOWLRS).items()}
    group_lr = dict(zip(GROUPS, reference["lrs"][1]))
    offsets = {}
    for k, (official, stats) in reference["w1_official"].items():
        w0 = weights[k].reshape(-1)[index[k]].astype(np.float64)
        suite_form = reference["w1_suite"][k][0].astype(np.float64)
        ours = w1[k].reshape(-1)[index[k]].astype(np.float64)
        if weights[k].ndim > 1:
            assert np.array_equal(suite_form, official), k
            continue
        expected = group_lr[name_group[k]] * (1 + mk.MOMENTUM) * mk.WEIGHT_DECAY * w0
        allow = 2 * np.spacing(np.abs(official)).astype(np.float64)
        assert np.all(np.abs(suite_form - official - expected) <= allow + 1e-6 * np.abs(expected)), k
        offsets[k] = float(np.abs(ours - official).max() / np.abs(official - w0).max())     # relative to the step
    assert set(offsets) == {k for k in weights if weights[k].ndim == 1 and "running" not in k}
    k = max(offsets, key=offsets.get)
    print(f"the official decay of 1-D tensors changes their step by up to {offsets[k]:.2e} of the step ({k}); "
          f"median over those tensors {np.median(list(offsets.values())):.2e}")
    assert np.median(list(offsets.values())) > 1e-3

    # BatchNorm running variance: Paddle updates it with the biased batch variance, torch with the unbiased one.
    # Undo torch's n / (n - 1) on the official value (n = batch x height x width of the layer) and they agree.
    var = {k: v for k, v in bn.items() if k.endswith("running_var")}
    official_var = {k: v for k, v in reference["bn_stats"].items() if k.endswith("running_var")}
    raw = compare(var, official_var, index)
    unbiased_removed = {}
    for k, (values, _) in official_var.items():
        n = mk.BATCH * batch_norm_pixels(k)
        start = weights[k].reshape(-1)[index[k]].astype(np.float64)
        batch_var = (values - (1 - mk.BN_MOMENTUM) * start) / mk.BN_MOMENTUM * (n - 1) / n
        expected = (1 - mk.BN_MOMENTUM) * start + mk.BN_MOMENTUM * batch_var
        unbiased_removed[k] = rel(var[k].reshape(-1)[index[k]], expected)
    print(f"bn running var: max rel diff {max(raw.values()):.2e} as is, "
          f"{max(unbiased_removed.values()):.2e} with torch's n / (n - 1) undone")
    assert max(raw.values()) > 1e-3              # measured 1.6e-2 (layer4: n = 16)
    assert max(unbiased_removed.values()) <= 1e-4     # the rest is float32 rounding, amplified x10 by the undoing


def batch_norm_pixels(key):
    """Height x width of the feature map a ResNet-18 BatchNorm normalises at IMG px (stem /4 before the pool)."""
    stage = int(key[5]) if key.startswith("layer") else 0
    side = mk.IMG // 2 if stage == 0 else mk.IMG // 2 ** (stage + 1)
    return side * side


def test_schedule(reference):
    """Each group's rate at every epoch boundary vs the official per-epoch StepLRScheduler."""
    config = recipe_config()
    model = TransferMethod().build_model(config)
    mult = TransferMethod().lr_mult_fn(config, model)
    groups = lr_groups(model, mk.NUM_LOWLRS)
    names = {g: next(n for n, gg in groups.items() if gg == g) for g in GROUPS}
    sched = build_scheduler(config, mk.STEPS_PER_EPOCH, mk.BATCH)
    ours = np.array([[sched.lr_at(e * mk.STEPS_PER_EPOCH) * mult(names[g]) for g in GROUPS]
                     for e in range(mk.SCHEDULE_EPOCHS)])
    official = reference["schedule"]
    after = slice(mk.WARMUP_EPOCHS, None)
    print("\nepoch  suite head/high/low           official head/high/low")
    for e in range(mk.SCHEDULE_EPOCHS):
        print(f"{e:5d}  {ours[e, 0]:.6f} {ours[e, 1]:.6f} {ours[e, 2]:.6f}   "
              f"{official[e, 0]:.6f} {official[e, 1]:.6f} {official[e, 2]:.6f}")
    assert rel(ours[after], official[after]) <= 1e-12          # step decay, all groups
    assert rel(ours[:, 0], official[:, 0]) <= 1e-12            # the head group (rate = BASE_LR) throughout
    # warm-up, deliberate: a group at multiplier m starts from m * WARMUP_LR, not WARMUP_LR
    m = np.array([mult(names[g]) for g in GROUPS])
    e = np.arange(mk.WARMUP_EPOCHS)[:, None]
    gap = ours[:mk.WARMUP_EPOCHS] - official[:mk.WARMUP_EPOCHS]
    assert np.allclose(gap, (m - 1) * mk.WARMUP_LR * (1 - e / mk.WARMUP_EPOCHS), rtol=1e-9, atol=1e-15)
    assert np.abs(gap[0, 1:]).min() > 5e-5                      # measured 6.7e-5 (high), 9.0e-5 (low) at epoch 0
    # ... and it ramps within the epoch where the official rate is constant
    assert sched.lr_at(mk.STEPS_PER_EPOCH - 1) > 5 * official[0, 0]


def test_twenty_steps_loss_curves(reference, drawn):
    config = recipe_config()
    method, model, scheduler, optimizer, criterion, _ = suite_setup(drawn, config)
    scheduler.step(mk.CURVE_START)
    curve, curve_ce = [], []
    for x, y, lam in mk.curve_stream(drawn[2]):
        _, loss, terms = forward_loss(method, model, criterion, x, y, lam, config)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        scheduler.step()
        curve.append(float(loss))
        curve_ce.append(float(loss) - float(terms["l2sp"]))
    diffs = [abs(a - b) / abs(b) for a, b in zip(curve, reference["curve"])]
    print("\nstep  suite(paddle)  official(torch)  rel diff")
    for i, (a, b, d) in enumerate(zip(curve, reference["curve"], diffs)):
        print(f"{i:4d}  {a:.7f}  {b:.7f}  {d:.1e}")
    final = compare(as_torch(model, "weight"), reference["w_curve"], reference["index"])
    final_buf = compare(as_torch(model, "buf", optimizer), reference["buf_curve"], reference["index"])
    report("weights after 20", final)
    report("momentum after 20", final_buf)
    gap = reference["f64_gap"]["curve"]
    print(f"official float32 vs float64 curve: max {gap.max():.1e}; suite vs official: max {max(diffs):.1e}")
    assert reference["curve_ce"][-1] < 0.5 * reference["curve_ce"][0]      # the run trains (cycled batches)
    assert max(diffs[:10]) <= CURVE_TOL_10                                  # before rounding has grown
    assert max(diffs) <= max(CURVE_TOL_20, CURVE_TOL + 3 * gap.max())       # (CROSS_CPU)
    ce_diffs = np.abs(np.array(curve_ce) - reference["curve_ce"]) / np.abs(reference["curve"])
    assert max(ce_diffs) <= max(CURVE_TOL_20, CURVE_TOL + 3 * gap.max())
    assert max(final.values()) <= TOL + 3 * reference["f64_gap"]["w_curve"].max()
    assert max(final_buf.values()) <= TOL + 3 * reference["f64_gap"]["buf_curve"].max()
