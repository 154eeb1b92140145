"""Training fidelity for PIM: one training step of the suite's recipe == one step of the official training loop.

The reference numbers (tests/fixtures/train_step/pim/pim_train_step.npz) come from the official code's own
``main.set_environment`` + ``main.train`` (chou141253/FGVC-PIM: its loss over the output dict / update_freq, its
SGD over every parameter, its per-batch LR schedule), run in float64 by make_fixture.py on a tiny Swin PIM (64 px,
width 3, depths 2-2-2-1, window 2, FPN 8, selects 48/12/3/3, 10 classes) with seeded weights (BatchNorm statistics
too) and the recipe of its CUB config (lr 5e-4, wd 5e-4, Nesterov 0.9, 800 warm-up batches, 50 epochs, update_freq
2, lambdas 0.5/0/5/1). Our side is built the way the trainer builds it: configs/pim/cub_swin_large_384.yaml (->
fgvc_recipe.yaml) made tiny by -opts, PIMMethod.build_model / prepare_training / forward / loss, the engine's
ClassificationLoss, build_optimizer's parameter groups, build_scheduler, and the trainer's accumulation (loss / 2
per micro-batch, one step). The weights go through pim/port_weights.py's PIM_RULES; so do the reference's
gradients, updated weights and momentum buffers, so every comparison is in our layout. Each comparison is
max|paddle - ref| / max|ref| per tensor (TOL = 1e-5):

  (a) every loss term of both micro-batches: loss_b (lambda_b), loss_n (lambda_n), loss_c (lambda_c), the total;
      loss_s (lambda_s) in a second step with lambda_s = 1 (the recipe has 0), with the plug-in module's gradients;
  (b) every parameter's gradient after the two micro-batches;
  (c) every parameter after the Nesterov step, the step itself (w1 - w0, less float32 rounding of w1), and the
      momentum buffers; the BatchNorm running statistics after the two forward passes;
  (d) 20 optimizer steps (40 micro-batches, a fixed stream): the loss curves.
The step uses the reference's learning rate at that batch; our schedule is compared with the reference's on its own.

Deliberate differences (README, PIM: "Other differences"), each shown with its measured size:
  * weight decay: the reference decays every parameter; build_optimizer exempts 1-D tensors, biases and Swin's
    relative-position tables. Those tensors are compared against the reference's step with the decay term
    lr (1 + momentum) wd w0 (and wd w0 in the momentum buffer) taken out, and that term is asserted to be real;
  * learning rate: the reference sets it per batch (warm-up: linspace over 800 batches; cosine over the whole run
    that never reaches 0), the suite per optimizer update (warm-up over 400 updates, cosine to MIN_LR over the rest);
    at the fixture's step (epoch 1 of CUB: update 188 = batch 376) 2.3500e-4 vs 2.3529e-4.
Test-only settings (both sides): drop path 0 and the combiner's Dropout(0.1) at p = 0, fp32 instead of AMP, images
fed as tensors (no augmentation), batches of 2.

Live: with PIM_REF set to a checkout (or bare git repository) of the official code and torch installed,
test_live_regenerates_fixture reruns make_fixture.py with the committed seeds and requires the same numbers.
"""
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import paddle  # noqa: E402

from common.config import merge_opts, merge_yaml  # noqa: E402
from common.engine.losses import ClassificationLoss  # noqa: E402
from common.engine.lr import build_scheduler  # noqa: E402
from common.engine import optim  # noqa: E402
from common.engine.optim import build_optimizer  # noqa: E402
from common.porting import fingerprint, port_state_dict, seeded_input, seeded_state  # noqa: E402
from pim.method import PIMMethod  # noqa: E402
from pim.port_weights import PIM_RULES  # noqa: E402
from tests.helpers import rel  # noqa: E402

HERE = os.path.join(REPO, "tests", "fixtures", "train_step", "pim")
FIXTURE = os.path.join(HERE, "pim_train_step.npz")
RECIPE = os.path.join(REPO, "configs", "pim", "cub_swin_large_384.yaml")
LAYERS = ["layer1", "layer2", "layer3", "layer4"]
TOL = 1e-5
# Gradients (and the step and momentum they set) agree to 2.8e-5 in float32, and that is float32 rounding: the same
# code in float64 agrees to 7.6e-7 (test_float64_gradients_close_the_gap; the engine's losses stay float32, which
# is what is left). The gradients here are large (up to 46, patch embedding) and sums of many cancelling terms (BN,
# lambda_n 5 on tanh, heads x3), so their float32 error relative to max|grad| is larger than ResMLP's 5e-6.
GRAD_TOL = 5e-5
CURVE_TOL = 1e-5
CURVE_STEPS_EXACT = 8       # steps compared to CURVE_TOL (see test_twenty_steps_loss_curves: the selector's chaos)
CURVE_FLOAT32_STEPS = 2     # the same in float32 (see test_twenty_steps_float32)
# conv biases right before a BatchNorm (train mode): the normalisation cancels them, their true gradient is 0
# (float64 reference: ~1e-16). Compared in absolute terms, against the gradient of the same layer's weight.
ZERO_GRAD = {f"fpn_classifier_{layer}.0.bias" for layer in LAYERS}


# ---------------------------------------------------------------------------------------------- fixture and model
def load_fixture(path=FIXTURE):
    z = dict(np.load(path))
    keys = str(z["keys"]).split("\n")
    shapes = {k: tuple(int(d) for d in row if d >= 0) for k, row in zip(keys, z["shapes"])}
    int_keys = set(str(z["int_keys"]).split("\n")) - {""}
    weights = seeded_state(shapes, int(z["weight_seed"]), {k: "int64" for k in int_keys})
    for k in weights:       # make_fixture.scale_heads: larger head logits, fewer near-ties in the selector
        if k.startswith("fpn_classifier_") and k.endswith(".3.weight"):
            weights[k] = (weights[k] * float(z["head_scale"])).astype(np.float32)
    if not np.allclose(fingerprint(weights), z["weights_fingerprint"], rtol=1e-9):
        pytest.fail("numpy's RandomState no longer reproduces the fixture's weights; regenerate with "
                    "tests/fixtures/train_step/pim/make_fixture.py")
    return z, weights


def stream(z, which):
    """The fixture's micro-batches [(x, y)], rebuilt from its seed (as make_fixture.batches)."""
    seed, labels = int(z[f"{which}_seed"]), z[f"{which}_labels"]
    size, batch = int(z["cfg_image_size"]), int(z["cfg_batch"])
    distinct = int(z.get(f"{which}_distinct", len(labels)))          # make_fixture.batches(..., distinct)
    xs = [seeded_input((batch, 3, size, size), seed * 1000 + i % distinct) for i in range(len(labels))]
    if not np.allclose(fingerprint(xs), z[f"{which}_inputs_fingerprint"], rtol=1e-9):
        pytest.fail("the fixture's input stream is not reproduced; regenerate it")
    return list(zip(xs, labels))


def tiny_opts(z, lambda_s=None):
    def ints(key):
        return str([int(v) for v in np.atleast_1d(z[key])]).replace(" ", "")
    opts = ["MODEL.NAME", "swin_tiny_patch4_window7_224", "MODEL.PRETRAINED", "",
            "MODEL.NUM_CLASSES", str(int(z["cfg_num_classes"])), "DATA.IMAGE_SIZE", str(int(z["cfg_image_size"])),
            "MODEL.PIM.FPN_SIZE", str(int(z["cfg_fpn_size"])), "MODEL.PIM.NUM_SELECTS", ints("cfg_num_selects"),
            "MODEL.PIM.SWIN.PATCH_SIZE", str(int(z["cfg_patch_size"])),
            "MODEL.PIM.SWIN.EMBED_DIM", str(int(z["cfg_embed_dim"])), "MODEL.PIM.SWIN.DEPTHS", ints("cfg_depths"),
            "MODEL.PIM.SWIN.NUM_HEADS", ints("cfg_num_heads"),
            "MODEL.PIM.SWIN.WINDOW_SIZE", str(int(z["cfg_window_size"])),
            "MODEL.DROPPATH", "0.0", "AMP.ENABLE", "False"]
    if lambda_s is not None:
        opts += ["MODEL.PIM.LAMBDA_S", str(lambda_s)]
    return opts


def recipe_config(z, lambda_s=None):
    method = PIMMethod()
    c = method.get_config()
    merge_yaml(c, RECIPE)
    merge_opts(c, tiny_opts(z, lambda_s))
    return method, c


def build(z, weights, lambda_s=None):
    """(method, config, model) with the fixture's weights, in train mode, as the trainer prepares it."""
    paddle.seed(0)
    method, config = recipe_config(z, lambda_s)
    model = method.build_model(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ported, _ = port_state_dict(weights, shapes, PIM_RULES)
    missing, unexpected = model.set_state_dict({k: np.asarray(v) for k, v in ported.items()})
    assert not missing and not unexpected
    model.combiner.dropout.p = 0.0          # as in make_fixture.py: the one random operation left
    method.prepare_training(config, model, print)
    model.train()
    return method, config, model


def to_ours(model, ref, only=None):
    """Reference tensors {torch name: array} in our layout {our name: array}, through PIM_RULES (strict: every one
    of our trainable parameters -- or those `only` keeps -- filled exactly once)."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()
              if not p.stop_gradient and (only is None or only(n))}
    ported, _ = port_state_dict(ref, shapes, PIM_RULES)
    return ported


def unpack(z, kind):
    """make_fixture.pack's flat array -> {torch name: array}, shaped by the fixture's key table."""
    keys = str(z["keys"]).split("\n")
    shapes = {k: tuple(int(d) for d in row if d >= 0) for k, row in zip(keys, z["shapes"])}
    out, at = {}, 0
    for name in str(z[kind + "_names"]).split("\n"):
        size = int(np.prod(shapes[name]))
        out[name] = z[kind][at:at + size].reshape(shapes[name])
        at += size
    assert at == z[kind].size
    return out


# ------------------------------------------------------------------------------------------------- the training step
def micro_step(method, config, model, criterion, x, y):
    """One micro-batch as Trainer._micro_step does it: forward, the method's loss, backward of loss / ACCUM_ITER."""
    outputs = model(paddle.to_tensor(x))
    loss, terms = method.loss(criterion, outputs, paddle.to_tensor(y), model)
    (loss / config.TRAIN.ACCUM_ITER).backward()
    return float(loss), {k: float(v) for k, v in terms.items()}


def reference_terms(kinds, values, lambdas):
    """The reference's recorded CrossEntropy / MSE values (in its output-dict order: layer1..4, then select_/drop_
    per level, then comb_outs) as our weighted terms."""
    kinds = kinds.split("\n")
    assert kinds[:4] == ["CrossEntropyLoss"] * 4 and kinds[-1] == "CrossEntropyLoss"
    middle = list(zip(kinds[4:-1], values[4:-1]))
    ce_s = [v for k, v in middle if k == "CrossEntropyLoss"]
    mse = [v for k, v in middle if k == "MSELoss"]
    assert len(mse) == 4 and len(ce_s) in (0, 4)
    terms = {"loss_b": lambdas["lambda_b"] * sum(values[:4]), "loss_n": lambdas["lambda_n"] * sum(mse),
             "loss_c": lambdas["lambda_c"] * values[-1]}
    if ce_s:
        terms["loss_s"] = lambdas["lambda_s"] * sum(ce_s)
    return terms


def compare_terms(ours, z, prefix, lambdas):
    res = {}
    ref_kinds = str(z[f"{prefix}_term_kinds"])
    for i, (total, terms) in enumerate(ours):
        ref = reference_terms(ref_kinds, z[f"{prefix}_terms"][i], lambdas)
        assert sorted(ref) == sorted(terms), (ref, terms)
        ref["total"] = float(z[f"{prefix}_backward"][i]) * int(z["ref_update_freq"])
        assert ref["total"] == pytest.approx(sum(v for k, v in ref.items() if k != "total"), rel=1e-12)
        terms = dict(terms, total=total)
        for k in ref:
            res[f"{k}[{i}]"] = rel(terms[k], ref[k])
    print(f"\n{prefix} loss terms rel diff: " + ", ".join(f"{k}={v:.1e}" for k, v in res.items()))
    return res


def record_batch_variances(model):
    """{BatchNorm layer name: [(elements per channel n, biased batch variance)] per forward} (forward pre-hooks)."""
    out = {"hooks": []}
    for name, layer in model.named_sublayers():
        if isinstance(layer, paddle.nn.BatchNorm1D):
            def hook(layer, inputs, name=name):
                x = inputs[0].numpy().astype(np.float64)
                x = x.reshape(-1, x.shape[-1]) if x.ndim == 3 and layer.__class__.__name__.startswith("Token") \
                    else np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])     # tokens [B, S, C] or [B, C, L]
                out.setdefault(name, []).append((x.shape[0], x.var(axis=0)))
            out["hooks"].append(layer.register_forward_pre_hook(hook))
    return out


@pytest.fixture(scope="module")
def fixture():
    return load_fixture()


@pytest.fixture(scope="module")
def stepped(fixture):
    """Our one step on the fixture's two micro-batches at the reference's learning rate."""
    z, weights = fixture
    method, config, model = build(z, weights)
    lr = float(z["step_lr"])
    opt = build_optimizer(config, model, lr, method.lr_mult_fn(config, model))
    criterion = ClassificationLoss(config.MODEL.NUM_CLASSES, config.TRAIN.SMOOTHING, config.TRAIN.SMOOTHING_MODE)
    w0 = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    batch_vars = record_batch_variances(model)
    terms = [micro_step(method, config, model, criterion, x, y) for x, y in stream(z, "step")]
    for hook in batch_vars.pop("hooks"):
        hook.remove()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    opt.step()
    w1 = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    velocity = {n: opt._accumulators["velocity"][p.name].numpy().copy()
                for n, p in model.named_parameters() if not p.stop_gradient}
    decayed = {n for g, names in zip(opt._param_groups, opt.group_names) if g["regularization_coeff"] > 0
               for n in names}
    bn = {k: v.numpy().copy() for k, v in model.state_dict().items() if k.endswith(("_mean", "_variance"))}
    return dict(z=z, config=config, model=model, lr=lr, w0=w0, terms=terms, grads=grads, w1=w1, batch_vars=batch_vars,
                velocity=velocity, decayed=decayed, bn=bn, lambdas=dict(model.pim_settings.lambdas))


def test_recipe_settings(fixture):
    """The suite's recipe holds the reference's numbers (its CUB yaml and main.py's SGD, as the fixture recorded)."""
    z, _ = fixture
    _, c = recipe_config(z)
    t, p = c.TRAIN, c.MODEL.PIM
    assert t.OPTIMIZER.NAME.lower() == str(z["ref_optimizer"]).lower() == "sgd"
    assert (t.OPTIMIZER.MOMENTUM, bool(t.OPTIMIZER.NESTEROV)) == (float(z["ref_momentum"]), bool(z["ref_nesterov"]))
    assert float(z["ref_dampening"]) == 0
    assert (t.BASE_LR, t.WEIGHT_DECAY) == (float(z["ref_max_lr"]), float(z["ref_weight_decay"]))
    assert t.ACCUM_ITER == int(z["ref_update_freq"]) and t.EPOCHS == int(z["ref_max_epochs"])
    assert t.WARMUP_ITERS * t.ACCUM_ITER == int(z["ref_warmup_batchs"])        # 400 updates = 800 batches
    assert c.DATA.BATCH_SIZE * t.ACCUM_ITER == t.LINEAR_SCALED_LR == 16 * int(z["ref_update_freq"])
    assert (p.LAMBDA_B, p.LAMBDA_S, p.LAMBDA_N, p.LAMBDA_C) == tuple(
        float(z[f"ref_lambda_{k}"]) for k in "bsnc")
    assert (t.SMOOTHING, c.AUG.MIXUP_PROB, t.GRAD_CLIP, c.EMA.ENABLE) == (0.0, 0.0, 0, False)


def test_loss_terms_match_reference(stepped):
    s = stepped
    res = compare_terms(s["terms"], s["z"], "step", s["lambdas"])
    assert "loss_s" not in s["terms"][0][1]               # lambda_s 0: skipped on both sides
    assert max(res.values()) <= TOL, res


def grad_diffs(grads, ref):
    """{name: rel diff}; ZERO_GRAD tensors relative to their layer's weight gradient."""
    top = max(np.abs(v).max() for v in ref.values())
    dead = {n for n, v in ref.items() if np.abs(v).max() < 1e-12 * top}
    assert dead == ZERO_GRAD, sorted(dead ^ ZERO_GRAD)                  # every other gradient is live
    return {n: (float(np.abs(g).max() / np.abs(ref[n[:-len("bias")] + "weight"]).max()) if n in dead
                else rel(g, ref[n])) for n, g in grads.items()}


def test_gradients_match_reference(stepped):
    s = stepped
    ref = to_ours(s["model"], unpack(s["z"], "grad"))
    res = grad_diffs(s["grads"], ref)
    worst = max(res, key=res.get)
    print(f"\ngradients: {len(res)} tensors, max rel diff {res[worst]:.2e} ({worst}); "
          f"{sum(v > TOL for v in res.values())} above 1e-5")
    assert res[worst] <= GRAD_TOL, {k: v for k, v in res.items() if v > GRAD_TOL}


def test_float64_gradients_close_the_gap(fixture):
    """The float32 gradient gap (GRAD_TOL) is rounding: the same model, loss and accumulation in float64."""
    z, weights = fixture
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        method, config, model = build(z, {k: v.astype(np.float64) if v.dtype == np.float32 else v
                                          for k, v in weights.items()})
        assert model.fpn_classifier_layer1[0].weight.dtype == paddle.float64
        criterion = ClassificationLoss(config.MODEL.NUM_CLASSES)
        for x, y in stream(z, "step"):
            micro_step(method, config, model, criterion, x.astype(np.float64), y)
        grads = {n: p.grad.numpy() for n, p in model.named_parameters() if not p.stop_gradient}
    finally:
        paddle.set_default_dtype(previous)
    res = grad_diffs(grads, to_ours(model, unpack(z, "grad")))
    worst = max(res, key=res.get)
    print(f"\nfloat64 gradients: max rel diff {res[worst]:.2e} ({worst})")
    assert res[worst] < 2e-6


def decay_term(s, n, factor):
    """What the reference's decay of everything adds for a tensor the suite exempts (0 for decayed tensors)."""
    return 0.0 if n in s["decayed"] else factor * float(s["z"]["ref_weight_decay"]) * s["w0"][n].astype(np.float64)


def test_update_and_momentum_match_reference(stepped):
    s = stepped
    z, lr, m = s["z"], s["lr"], float(s["z"]["ref_momentum"])
    w1_ref = to_ours(s["model"], unpack(z, "w1"))
    buf_ref = to_ours(s["model"], unpack(z, "buf"))
    exempt = sorted(set(s["w1"]) - s["decayed"])
    assert any(".norm" in n for n in exempt) and any(n.endswith(".bias") for n in exempt)
    assert any(n.endswith("relative_position_bias_table") for n in exempt) and "combiner.alpha1" in exempt
    assert "combiner.adj1" in s["decayed"] and "fpn.Up_layer2.weight" in s["decayed"]
    grad_ref = to_ours(s["model"], unpack(z, "grad"))
    res = {"weight": {}, "update": {}, "momentum": {}}
    for n in s["w1"]:
        # the corrected reference: its step without the decay of a tensor the suite exempts
        want_w1 = w1_ref[n].astype(np.float64) + lr * (1 + m) * decay_term(s, n, 1.0)
        want_buf = buf_ref[n].astype(np.float64) - decay_term(s, n, 1.0)
        res["weight"][n] = rel(s["w1"][n], want_w1)
        # = the gradient (+ decay); for ZERO_GRAD tensors measured against the layer's weight gradient
        scale = np.abs(grad_ref[n[:-len("bias")] + "weight"]).max() if n in ZERO_GRAD else np.abs(want_buf).max()
        res["momentum"][n] = float(np.abs(s["velocity"][n] - want_buf).max() / scale)
        # the step w1 - w0, less the float32 rounding of w1 (2 ulps: the reference's stored float32, our own)
        dp = s["w1"][n].astype(np.float64) - s["w0"][n]
        dt = want_w1 - s["w0"][n]
        allow = 2 * np.spacing(np.abs(w1_ref[n]).astype(np.float32)).astype(np.float64)
        step_scale = lr * (1 + m) * scale if n in ZERO_GRAD else np.abs(dt).max()
        res["update"][n] = float(np.maximum(np.abs(dp - dt) - allow, 0).max() / step_scale)
    for kind, d in res.items():
        k = max(d, key=d.get)
        tol = TOL if kind == "weight" else GRAD_TOL       # the step and the momentum are the gradient x constants
        print(f"\n{kind:8s} max rel diff {d[k]:.2e} ({k})")
        assert d[k] <= tol, (kind, {n: v for n, v in d.items() if v > tol})


def test_weight_decay_exemption_with_reference_gradients(fixture):
    """The optimizer alone: our build_optimizer step fed the reference's own gradients. Decayed tensors land on the
    reference's weights and momentum; the tensors the suite exempts differ by exactly the reference's decay term
    (lr (1 + momentum) wd w0 in the weights, wd w0 in the momentum) -- the deliberate difference, measured."""
    z, weights = fixture
    method, config, model = build(z, weights)
    lr, m, wd = float(z["step_lr"]), float(z["ref_momentum"]), float(z["ref_weight_decay"])
    opt = build_optimizer(config, model, lr, method.lr_mult_fn(config, model))
    grads = to_ours(model, unpack(z, "grad"))
    params = {n: p for n, p in model.named_parameters() if not p.stop_gradient}
    w0 = {n: p.numpy().astype(np.float64) for n, p in params.items()}
    # d/dp sum(p * g) = g exactly: the reference's gradients on our parameters
    paddle.add_n([(p * paddle.to_tensor(grads[n])).sum() for n, p in params.items()]).backward()
    opt.step()
    decayed = {n for g, names in zip(opt._param_groups, opt.group_names) if g["regularization_coeff"] > 0
               for n in names}
    w1_ref, buf_ref = to_ours(model, unpack(z, "w1")), to_ours(model, unpack(z, "buf"))
    same, exempt = {}, {}
    for n, p in params.items():
        velocity = opt._accumulators["velocity"][p.name].numpy().astype(np.float64)
        if n in decayed:
            same[n] = max(rel(p.numpy(), w1_ref[n]), rel(velocity, buf_ref[n]))
        else:
            term = wd * w0[n]
            # in the weights the term (~4.5e-7 |w|) is a few float32 ulps: checked up to 2 ulps of rounding
            off = np.abs(p.numpy() - w1_ref[n] - lr * (1 + m) * term)
            ulps = 2 * np.spacing(np.maximum(np.abs(w1_ref[n]), np.abs(w0[n])).astype(np.float32)).astype(np.float64)
            exempt[n] = (rel(buf_ref[n] - velocity, term), float((off > ulps).sum()), rel(velocity, buf_ref[n]))
    k = max(same, key=same.get)
    print(f"\nreference gradients, {len(same)} decayed tensors: weights and momentum within {same[k]:.1e} ({k})")
    worst_term = max(v[0] for v in exempt.values())
    assert sum(v[1] for v in exempt.values()) == 0          # weights: reference + its decay term, within rounding
    k = max(exempt, key=lambda n: exempt[n][2])
    print(f"{len(exempt)} exempt tensors: reference - suite momentum = its decay term wd w0 to {worst_term:.1e}; "
          f"momentum off by up to {exempt[k][2]:.1e} of its scale ({k})")
    assert max(same.values()) <= TOL
    # the fixture's buffers are float32: their rounding (~6e-8 |g|) against a term of 5e-4 |w| leaves ~1e-2
    assert worst_term < 5e-2 and exempt[k][2] > 100 * TOL


def test_batchnorm_statistics_match_reference(stepped):
    """FOUND, not fixed (a Paddle kernel property, every BatchNorm of the suite): torch's running variance takes the
    UNBIASED batch variance (x n / (n - 1)), Paddle's the biased one. The running means agree; the running
    variances agree once that factor is accounted for, and the raw difference is asserted (here n = 4..128 per
    channel: up to 3.6%; at the recipe's batch of 16 n >= 16 x 85, so <= 7e-4 of the batch variance term)."""
    s = stepped
    ref = unpack(s["z"], "bn")
    shapes = {k: v.shape for k, v in s["bn"].items()}
    ported, _ = port_state_dict(ref, shapes, PIM_RULES)
    assert len(ported) == len(s["bn"]) > 0
    start = port_state_dict({k: v for k, v in load_fixture()[1].items() if "running_" in k}, shapes, PIM_RULES)[0]
    assert all(rel(s["bn"][k], start[k]) > 1e-3 for k in s["bn"])       # the two forward passes moved them
    momentum = 0.1                                                      # torch's (Paddle's 0.9)
    res, raw = {}, {}
    for k, ours in s["bn"].items():
        if k.endswith("_mean"):
            res[k] = rel(ours, ported[k])
            continue
        passes = s["batch_vars"][k[:-len("._variance")]]
        assert len(passes) == 2
        # reference - Paddle after two updates: momentum (1 - momentum)^(2 - 1 - t) * var_t / (n - 1), t = 0, 1
        unbias = sum(momentum * (1 - momentum) ** (len(passes) - 1 - t) * v / (n - 1)
                     for t, (n, v) in enumerate(passes))
        res[k] = rel(ours, ported[k] - unbias)
        raw[k] = rel(ours, ported[k])
    k = max(res, key=res.get)
    r = max(raw, key=raw.get)
    print(f"\nBatchNorm running statistics: {len(res)} tensors, max rel diff {res[k]:.2e} ({k}) with torch's unbiased "
          f"variance accounted for; raw {raw[r]:.2e} ({r})")
    assert res[k] <= TOL, res
    assert raw[r] > 1e-3


def test_selected_term_lambda_s(fixture):
    """lambda_s = 1 (off in the recipe): the selected-token CE term and the plug-in module's gradients."""
    z, weights = fixture
    method, config, model = build(z, weights, lambda_s=1.0)
    criterion = ClassificationLoss(config.MODEL.NUM_CLASSES, config.TRAIN.SMOOTHING, config.TRAIN.SMOOTHING_MODE)
    terms = [micro_step(method, config, model, criterion, x, y) for x, y in stream(z, "step")]
    res = compare_terms(terms, z, "s", dict(model.pim_settings.lambdas))
    assert all("loss_s" in t for _, t in terms) and max(res.values()) <= TOL, res
    ref = to_ours(model, unpack(z, "sgrad"), only=lambda n: not n.startswith("backbone."))
    grads = {n: rel(p.grad.numpy(), ref[n]) for n, p in model.named_parameters() if n in ref and n not in ZERO_GRAD}
    k = max(grads, key=grads.get)
    print(f"lambda_s = 1 gradients of the plug-in module: {len(grads)} tensors, max rel diff {grads[k]:.2e} ({k})")
    assert grads[k] <= GRAD_TOL
    recipe = to_ours(model, {k: v for k, v in unpack(z, "grad").items() if not k.startswith("backbone.")},
                     only=lambda n: n in ref)
    assert max(rel(recipe[n], ref[n]) for n in ref) > 1e-2                # the term does change the gradients


@contextlib.contextmanager
def default_dtype(dtype):
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


def run_curve(z, weights, dtype, decay_everything=True):
    """20 optimizer steps of our recipe on the fixture's stream at the reference's per-step rates; returns the
    per-micro-batch losses and the model. decay_everything: build_optimizer's groups with the reference's decay of
    every tensor (the exemption is measured in the one-step tests): the selector's near-ties turn any systematic
    difference into a different run within a few steps, and here only the arithmetic is to be compared."""
    from unittest import mock
    rule = (lambda name, param, skip: True) if decay_everything else optim.takes_weight_decay
    with default_dtype(dtype), mock.patch.object(optim, "takes_weight_decay", rule):
        method, config, model = build(z, {k: v.astype(dtype) if v.dtype == np.float32 else v
                                          for k, v in weights.items()})
        lrs = z["curve_lr"]
        opt = build_optimizer(config, model, float(lrs[0]), method.lr_mult_fn(config, model))
        criterion = ClassificationLoss(config.MODEL.NUM_CLASSES, config.TRAIN.SMOOTHING,
                                       config.TRAIN.SMOOTHING_MODE)
        data = stream(z, "curve")
        accum = config.TRAIN.ACCUM_ITER
        losses = []
        for step, lr in enumerate(lrs):
            opt.set_lr(float(lr))              # the reference's rate at this step (the schedules are compared below)
            for x, y in data[step * accum:(step + 1) * accum]:
                losses.append(micro_step(method, config, model, criterion, x.astype(dtype), y)[0])
            opt.step()
            opt.clear_grad(set_to_zero=False)
    return np.array(losses), model


def curve_report(name, ours, ref, own):
    diffs = np.abs(ours - ref) / np.abs(ref)
    print(f"\n{name}\nmicro-batch  suite(paddle)  official(torch)  rel diff  official f32 vs f64")
    for i, (a, b, d, o) in enumerate(zip(ours, ref, diffs, own)):
        print(f"{i:11d}  {a:.7f}  {b:.7f}  {d:.1e}  {o:.1e}")
    return diffs


def test_twenty_steps_loss_curves(fixture):
    """20 steps (40 micro-batches), ours in float64 against the reference's float64 run. The selector makes this
    model's run chaotic: a near-tie in the token ranking (the reference's smallest neighbouring gap over the run is
    ``curve_gap`` = 6e-6) turns a rounding-size difference into another token order, and the combiner's first layer
    is a Linear over token positions. Measured with the reference against itself (``curve_backward_f32``: its own
    loop in float32): 1e-5 after 2 steps, 5e-3 after 4, 0.1 after 6. So: agreement to CURVE_TOL over the first
    CURVE_STEPS_EXACT steps (ours in float64 stays within 6.5e-6 for 9), and over all 20 no further from the reference
    than the reference's own float32 run is; and the run trains."""
    z, weights = fixture
    ref = np.asarray(z["curve_backward"]) * int(z["ref_update_freq"])
    own = np.abs(np.asarray(z["curve_backward_f32"]) * int(z["ref_update_freq"]) - ref) / np.abs(ref)
    ours, model = run_curve(z, weights, "float64")
    diffs = curve_report("float64, weight decay on every tensor", ours, ref, own)
    w_ref = to_ours(model, unpack(z, "cw"), only=lambda n: not n.startswith("backbone."))
    final = {n: rel(p.numpy(), w_ref[n]) for n, p in model.named_parameters() if n in w_ref}
    k = max(final, key=final.get)
    print(f"plug-in module weights after {len(z['curve_lr'])} steps: max rel diff {final[k]:.2e} ({k}); "
          f"learning rates {z['curve_lr'][0]:.3e} .. {z['curve_lr'][-1]:.3e}")
    accum = int(z["ref_update_freq"])
    assert ref[-2:].mean() < 0.9 * ref[:2].mean()                   # the run trains
    assert diffs[:CURVE_STEPS_EXACT * accum].max() <= CURVE_TOL
    assert own[:CURVE_STEPS_EXACT * accum].max() > 10 * CURVE_TOL   # where the reference's own float32 run is
    assert diffs.max() <= own.max()
    assert final[k] <= own.max()


def test_twenty_steps_float32(fixture):
    """The suite's real precision and weight-decay groups: the first CURVE_FLOAT32_STEPS steps to 2 x CURVE_TOL
    (measured 9.2e-6; the reference's own float32 run: 1.0e-5), then as chaotic as the reference against itself."""
    z, weights = fixture
    ref = np.asarray(z["curve_backward"]) * int(z["ref_update_freq"])
    own = np.abs(np.asarray(z["curve_backward_f32"]) * int(z["ref_update_freq"]) - ref) / np.abs(ref)
    ours, _ = run_curve(z, weights, "float32", decay_everything=False)
    diffs = curve_report("float32, the suite's weight-decay groups", ours, ref, own)
    accum = int(z["ref_update_freq"])
    assert diffs[:CURVE_FLOAT32_STEPS * accum].max() <= 2 * CURVE_TOL
    assert diffs.max() <= 2 * own.max()


def test_lr_schedule_vs_reference(fixture):
    """The suite's schedule for the CUB run (375 batches of 16 per epoch = 188 updates, batch 32 per update) against
    the reference's per-batch array at the batch that triggers each update (2k + 1). Documented difference."""
    z, _ = fixture
    _, config = recipe_config(z)
    batches = int(z["cub_batches"])
    sched = build_scheduler(config, -(-batches // config.TRAIN.ACCUM_ITER), 16 * config.TRAIN.ACCUM_ITER)
    ks, ref = z["lr_steps"], z["lr_ref"]
    ours = np.array([sched.lr_at(int(k)) for k in ks])
    peak = float(z["ref_max_lr"])
    assert sched.base == peak and ref.max() <= peak
    late = ks >= 1
    relative = np.abs(ours - ref) / ref
    k_step = int(z["step_epoch"]) * sched.steps_per_epoch
    ours_step = sched.lr_at(k_step)
    print(f"\nLR vs reference: update 0 {ours[0]:.3e} vs {ref[0]:.3e}; updates >= 1: max rel diff "
          f"{relative[late].max():.2e} (update {int(ks[late][relative[late].argmax()])}), "
          f"max |diff| {np.abs(ours - ref).max() / peak:.2e} of the peak; fixture step (update {k_step}): "
          f"{ours_step:.5e} vs {float(z['step_lr']):.5e}")
    assert abs(ours_step / float(z["step_lr"]) - 1) == pytest.approx(1.25e-3, rel=0.02)
    assert np.abs(ours - ref).max() / peak < 0.05 and relative[late].max() > 1e-3


def test_live_regenerates_fixture(tmp_path):
    """PIM_REF=<official checkout or bare repo>: make_fixture.py reruns the official loop with the committed seeds;
    every recorded number must come out again (so the fixture-based tests above hold against the live reference)."""
    ref = os.environ.get("PIM_REF", "")
    if not ref:
        pytest.skip("PIM_REF (a checkout of github.com/chou141253/FGVC-PIM) not set")
    pytest.importorskip("torch")
    z, _ = load_fixture()
    out = tmp_path / "live.npz"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "make_fixture.py"), "--ref", ref, "--out", str(out),
                           "--step-seed", str(int(z["step_seed"])), "--curve-seed", str(int(z["curve_seed"]))],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    live = dict(np.load(out))
    assert sorted(live) == sorted(z)
    worst = {}
    for k, v in z.items():
        if v.dtype.kind == "f":
            worst[k] = rel(live[k], v)
        else:
            assert np.array_equal(live[k], v), k
    k = max(worst, key=worst.get)
    print(f"\nlive reference vs committed fixture: max rel diff {worst[k]:.1e} ({k})")
    assert worst[k] <= 1e-6
