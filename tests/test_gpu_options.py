"""GPU options checked on the CPU: global-norm clipping of float16 gradients (AMP O2), MODEL.SYNC_BN,
DIST.FIND_UNUSED_PARAMETERS and the methods' decision (PIM's checked against real backward passes), ResMLP's
subnormal layer-scale init under O2 float16, the cached resize matrices, and the launcher's --host for --ips."""
import logging
import math
import os

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from common import launch
from common.cli import build_parser, config_from_args
from common.config import ConfigError, get_default_config
from common.engine.optim import GlobalNormClip, build_optimizer
from common.engine.trainer import Trainer
from common.method import ClassificationMethod, convert_sync_batchnorm, find_unused_parameters

FP16_MAX = 65504.0


def config_for(method, *opts):
    return config_from_args(build_parser().parse_args(["-opts", *opts] if opts else []), method.get_config())


# ------------------------------------------------------------------------------------ 1. float16 gradient clipping
def float16_linear_with_grads(value=300.0):
    """A Linear cast to float16 as AMP O2 leaves it, with hand-made float16 gradients: weight [8, 8] and bias [8]
    all `value`, so the weight's squared norm alone (64 * 300^2 = 5.76e6) is far beyond float16's 65504."""
    paddle.seed(0)
    layer = nn.Linear(8, 8)
    layer.to(dtype="float16")
    assert layer.weight.dtype == paddle.float16
    grads = [(p, paddle.full(p.shape, value, dtype="float16")) for p in layer.parameters()]
    return layer, grads


def global_norm(grads):
    return math.sqrt(sum(float(np.sum(g.numpy().astype(np.float64) ** 2)) for _, g in grads if g is not None))


def test_the_suites_clip_sums_float16_gradients_in_float32():
    cfg = get_default_config()
    cfg.TRAIN.GRAD_CLIP = 1.0
    layer, grads = float16_linear_with_grads()
    optimizer = build_optimizer(cfg, layer, 0.1, multi_precision=True)
    assert isinstance(optimizer._grad_clip, GlobalNormClip)
    before = global_norm(grads)
    assert before ** 2 > FP16_MAX                       # the float16 sum of squares would overflow
    out = optimizer._grad_clip(grads)
    assert all(g.dtype == paddle.float16 for _, g in out)
    values = np.concatenate([g.numpy().astype(np.float64).ravel() for _, g in out])
    assert np.isfinite(values).all() and (values > 0).all()
    assert global_norm(out) == pytest.approx(1.0, rel=2e-3)            # clipped to GRAD_CLIP (float16 rounding)
    np.testing.assert_allclose(values, 300.0 / before, rtol=2e-3)     # same direction: every entry scaled alike


def test_paddles_own_clip_zeroes_the_step_where_float16_squares_overflow(monkeypatch):
    """What a GPU does: Paddle's ClipGradByGlobalNorm takes each squared norm with `_squared_l2_norm`, in the
    gradient's dtype (paddle/nn/clip.py). The CPU build has no float16 kernel for it, so its GPU result (the float32
    sum rounded to float16) stands in: inf -> factor clip / inf = 0 -> a zero update. The suite's clip does not use
    that function and gives the right norm under the same stand-in."""
    import paddle.nn.clip as clip_module

    def squared_norm_in_grad_dtype(x):
        return paddle.sum(paddle.square(x.astype("float32"))).astype(x.dtype)

    class Factor(Exception):
        pass

    def record_factor(grad, factor):                    # called with the factor every gradient is multiplied by
        raise Factor(float(factor.astype("float32").reshape([])))   # (CPU Paddle has no float16 multiply)

    monkeypatch.setattr(clip_module, "_squared_l2_norm", squared_norm_in_grad_dtype)
    monkeypatch.setattr(clip_module, "_can_inplace_clip_grad", record_factor)
    _, grads = float16_linear_with_grads()
    with pytest.raises(Factor) as factor:
        paddle.nn.ClipGradByGlobalNorm(1.0)(grads)
    assert factor.value.args[0] == 0.0                  # every gradient times 0: the step silently lost
    _, grads = float16_linear_with_grads()
    ours = GlobalNormClip(1.0)(grads)
    assert global_norm(ours) == pytest.approx(1.0, rel=2e-3)


def test_the_suites_clip_equals_paddles_for_float32_and_skips_what_paddle_skips():
    paddle.seed(1)
    layers = [nn.Linear(6, 5), nn.Linear(5, 3)]
    for clip_norm in (0.5, 1e6):                        # clipped, and left alone (factor 1)
        rng = np.random.RandomState(2)
        params = [p for layer in layers for p in layer.parameters()]
        params[-1].need_clip = False                    # exempt: passes through unscaled
        grads = [(p, paddle.to_tensor(rng.randn(*p.shape).astype("float32"))) for p in params]
        grads[0] = (grads[0][0], None)                  # no gradient: dropped (as Paddle does)
        ref = paddle.nn.ClipGradByGlobalNorm(clip_norm)([(p, None if g is None else g.clone()) for p, g in grads])
        ours = GlobalNormClip(clip_norm)([(p, None if g is None else g.clone()) for p, g in grads])
        assert [p.name for p, _ in ours] == [p.name for p, _ in ref] == [p.name for p in params[1:]]
        for (_, a), (_, b) in zip(ours, ref):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(ours[-1][1].numpy(), grads[-1][1].numpy())
        params[-1].need_clip = True


def test_a_clipped_float32_training_step_still_moves_the_weights():
    cfg = get_default_config()
    cfg.TRAIN.GRAD_CLIP, cfg.TRAIN.OPTIMIZER.NAME = 0.1, "SGD"
    cfg.TRAIN.OPTIMIZER.MOMENTUM, cfg.TRAIN.WEIGHT_DECAY = 0.0, 0.0
    paddle.seed(3)
    layer = nn.Linear(4, 2)
    start = layer.weight.numpy().copy()
    optimizer = build_optimizer(cfg, layer, 1.0)
    (layer(paddle.randn([8, 4])) * 100).sum().backward()
    grad_norm = math.sqrt(sum(float((p.grad.astype("float64") ** 2).sum()) for p in layer.parameters()))
    optimizer.step()
    moved = math.sqrt(float(((layer.weight.numpy() - start) ** 2).sum()))
    assert grad_norm > 0.1 and 0 < moved <= 0.1 + 1e-6     # lr 1 x a gradient clipped to norm 0.1


# --------------------------------------------------------------------------------------------- 2. SyncBatchNorm
class OwnForwardBatchNorm(nn.BatchNorm1D):
    def forward(self, x):
        return super().forward(x.reshape([-1, x.shape[-1]])).reshape(x.shape)


def bn_model():
    paddle.seed(4)
    return nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4), nn.ReLU(),
                         nn.Sequential(nn.Conv2D(4, 4, 1), nn.BatchNorm2D(4, momentum=0.8, epsilon=1e-3)),
                         nn.Flatten(), nn.BatchNorm1D(4 * 6 * 6), OwnForwardBatchNorm(144))


def test_sync_batchnorm_conversion_keeps_parameters_statistics_and_keys():
    model = bn_model()
    model.train()
    model(paddle.randn([2, 3, 8, 8]))                   # non-trivial running statistics
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    converted, kept = convert_sync_batchnorm(model)
    assert converted == ["1", "3.1", "5"] and kept == ["6"]
    assert [type(model[1]), type(model[3][1]), type(model[5])] == [nn.SyncBatchNorm] * 3
    assert type(model[6]) is OwnForwardBatchNorm      # its own forward kept
    assert model[3][1]._momentum == 0.8 and model[3][1]._epsilon == 1e-3
    after = model.state_dict()
    assert list(after) == list(state)                   # checkpoints and EMA keep their keys
    for k, v in after.items():
        np.testing.assert_array_equal(v.numpy(), state[k])
    for n, p in model.named_parameters():               # the same tensors: an optimizer built before still updates
        assert p is params[n]
    assert convert_sync_batchnorm(model) == ([], ["6"])  # idempotent


def test_paddle_has_no_sync_batch_norm_kernel_on_cpu():
    """Why MODEL.SYNC_BN applies on GPUs only: the CPU build registers no sync_batch_norm kernel."""
    if paddle.is_compiled_with_cuda():
        pytest.skip("a CUDA build of Paddle")
    with pytest.raises(RuntimeError, match="sync_batch_norm"):
        nn.SyncBatchNorm(3)(paddle.randn([4, 3, 2, 2]))


class FakeDataParallel:
    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs


def data_parallel_for(method, config, device, monkeypatch, world=2):
    model = method.build_model(config)
    messages = []
    logger = logging.getLogger("test_gpu_options")
    monkeypatch.setattr(logger, "info", messages.append)
    trainer = Trainer(config, method, model, "unused", logger, device)
    trainer.world = world
    monkeypatch.setattr(paddle, "DataParallel", FakeDataParallel)
    return trainer._data_parallel(), model, messages


class BNMethod(ClassificationMethod):
    def build_model(self, config):
        return bn_model()


def test_sync_bn_key_converts_on_gpu_and_notes_cpu(monkeypatch):
    method = BNMethod()
    assert method.get_config().MODEL.SYNC_BN is False
    cfg = config_for(method, "MODEL.SYNC_BN", "True")
    ddp, model, messages = data_parallel_for(method, cfg, "gpu:0", monkeypatch)
    assert isinstance(ddp, FakeDataParallel) and ddp.model is model
    assert type(model[1]) is nn.SyncBatchNorm and type(model[6]) is OwnForwardBatchNorm
    assert any("3 BatchNorm layers synchronised" in m and "6" in m for m in messages)
    ddp, model, messages = data_parallel_for(method, cfg, "cpu", monkeypatch)
    assert type(model[1]) is nn.BatchNorm2D
    assert any("no SyncBatchNorm on CPU" in m for m in messages)
    ddp, model, _ = data_parallel_for(method, config_for(method), "gpu:0", monkeypatch)
    assert type(model[1]) is nn.BatchNorm2D             # off by default
    assert data_parallel_for(method, cfg, "gpu:0", monkeypatch, world=1)[0] is None


# ------------------------------------------------------------------------------------ 3. find_unused_parameters
def test_find_unused_parameters_key_values(monkeypatch):
    method = BNMethod()
    assert method.get_config().DIST.FIND_UNUSED_PARAMETERS is None        # auto
    assert find_unused_parameters(config_for(method), method) is False
    monkeypatch.setattr(method, "has_unused_parameters", lambda config: True)
    assert find_unused_parameters(config_for(method), method) is True
    assert find_unused_parameters(config_for(method, "DIST.FIND_UNUSED_PARAMETERS", "auto"), method) is True
    assert find_unused_parameters(config_for(method, "DIST.FIND_UNUSED_PARAMETERS", "False"), method) is False
    monkeypatch.setattr(method, "has_unused_parameters", lambda config: False)
    assert find_unused_parameters(config_for(method, "DIST.FIND_UNUSED_PARAMETERS", "True"), method) is True
    with pytest.raises(ConfigError, match="DIST.FIND_UNUSED_PARAMETERS 'sometimes'"):
        find_unused_parameters(config_for(method, "DIST.FIND_UNUSED_PARAMETERS", "sometimes"), method)
    ddp, _, messages = data_parallel_for(method, config_for(method, "DIST.FIND_UNUSED_PARAMETERS", "True"), "cpu",
                                         monkeypatch)
    assert ddp.kwargs == {"find_unused_parameters": True} and any("find_unused" in m for m in messages)
    ddp, _, _ = data_parallel_for(method, config_for(method), "cpu", monkeypatch)
    assert ddp.kwargs == {"find_unused_parameters": False}


TINY_PIM = ["MODEL.NAME", "swin_tiny_patch4_window7_224", "DATA.IMAGE_SIZE", "96", "MODEL.NUM_CLASSES", "5",
            "MODEL.PIM.FPN_SIZE", "16", "MODEL.PIM.SWIN.PATCH_SIZE", "4", "MODEL.PIM.SWIN.EMBED_DIM", "16",
            "MODEL.PIM.SWIN.DEPTHS", "[2,2,2,2]", "MODEL.PIM.SWIN.NUM_HEADS", "[1,2,4,8]",
            "MODEL.PIM.SWIN.WINDOW_SIZE", "3", "MODEL.DROPPATH", "0.0", "MODEL.PIM.NUM_SELECTS", "[40,16,6,4]"]
# levels of the tiny Swin: 144, 36, 9, 9 tokens


def lambdas(b, s, n, c):
    return ["MODEL.PIM.LAMBDA_B", str(b), "MODEL.PIM.LAMBDA_S", str(s), "MODEL.PIM.LAMBDA_N", str(n),
            "MODEL.PIM.LAMBDA_C", str(c)]


def pim_without_grad(method, cfg, model):
    """Trainable parameters left without a gradient by one training step's backward pass (random images)."""
    model.train()
    outputs = model(paddle.randn([2, 3, 96, 96]))
    loss, _ = method.loss(None, outputs, paddle.to_tensor([1, 3]), model)
    loss.backward()
    names = {n for n, p in model.named_parameters() if not p.stop_gradient and p.grad is None}
    model.clear_gradients(set_to_zero=False)
    return names


@pytest.mark.parametrize("extra, unused", [
    (lambdas(0.5, 0.0, 5.0, 1.0), []),                                        # the paper's weights
    (lambdas(0.5, 0.0, 5.0, 0.0), ["combiner"]),                              # combiner without a loss
    (lambdas(0.0, 0.0, 0.0, 1.0), ["fpn_classifier_layer1", "fpn_classifier_layer4"]),   # heads without a loss
    (lambdas(0.0, 1.0, 0.0, 1.0), []),                                        # heads reached by the selected tokens
    (lambdas(0.0, 0.0, 5.0, 1.0), []),                                        # ... by the dropped tokens
    (lambdas(0.0, 0.0, 5.0, 1.0) + ["MODEL.PIM.NUM_SELECTS", "[40,16,6,9]"], ["fpn_classifier_layer4"]),  # none
    (lambdas(0.0, 0.0, 0.0, 1.0) + ["MODEL.PIM.USE_FPN", "False"], ["selector.classifier_l_layer2"]),
    (lambdas(0.5, 0.0, 5.0, 0.0) + ["MODEL.PIM.USE_FPN", "False"], ["combiner.proj_layer3"]),
    # without the FPN, only layer2's dropped tokens reach the loss: backbone stages 3 and 4 are unused too
    (lambdas(0.0, 0.0, 5.0, 0.0) + ["MODEL.PIM.USE_FPN", "False", "MODEL.PIM.NUM_SELECTS", "[144,16,9,9]"],
     ["selector.classifier_l_layer1", "combiner", "backbone.layers.2", "backbone.layers.3"]),
    (lambdas(0.0, 0.0, 5.0, 1.0) + ["MODEL.PIM.USE_COMBINER", "False"], []),
    (lambdas(0.0, 0.0, 0.0, 0.0) + ["MODEL.PIM.USE_FPN", "False", "MODEL.PIM.USE_SELECTION", "False",
                                    "MODEL.PIM.USE_COMBINER", "False"], []),  # backbone only
])
def test_pim_freezes_exactly_the_parameters_its_loss_never_reaches(extra, unused):
    from pim.method import PIMMethod
    method = PIMMethod()
    cfg = config_for(method, *TINY_PIM, *extra)
    paddle.seed(5)
    reference = pim_without_grad(method, cfg, method.build_model(cfg))   # what a training step leaves out
    for prefix in unused:
        assert any(n.startswith(prefix + ".") for n in reference), (prefix, sorted(reference)[:5])
    assert bool(reference) == bool(unused)
    paddle.seed(5)
    model = method.build_model(cfg)
    model.train()
    stats = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    rng = paddle.get_rng_state()[0].current_seed()
    fixed = {n for n, p in model.named_parameters() if p.stop_gradient}       # BatchNorm statistics
    messages = []
    method.prepare_training(cfg, model, messages.append)
    frozen = {n for n, p in model.named_parameters() if p.stop_gradient} - fixed
    assert frozen == reference                                              # exactly those, nothing else
    assert bool(messages) == bool(unused) and all("frozen" in m for m in messages)
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():                                  # no BatchNorm statistic moved
        np.testing.assert_array_equal(v.numpy(), stats[k])
    assert paddle.get_rng_state()[0].current_seed() == rng
    assert pim_without_grad(method, cfg, model) == set()                     # DataParallel waits for nothing
    assert method.has_unused_parameters(cfg) is False and find_unused_parameters(cfg, method) is False


def test_pim_with_every_loss_weight_zero_is_a_config_error():
    from pim.method import PIMMethod
    method = PIMMethod()
    cfg = config_for(method, *TINY_PIM, *lambdas(0.0, 0.0, 0.0, 0.0), "MODEL.PIM.USE_COMBINER", "False")
    with pytest.raises(ConfigError, match="LAMBDA.*every term is switched off"):
        method.prepare_training(cfg, method.build_model(cfg), print)


def test_two_process_pim_training_with_a_zero_loss_weight(tmp_path):
    """LAMBDA_C 0 leaves the combiner without gradients: DataParallel stopped at the second step ("Please set
    find_unused_parameters=True"), and with find_unused_parameters=True too, since comb_outs is an output."""
    from common.demo_data import make_demo_data
    from tests.helpers import read_json, run_cli
    data = make_demo_data(str(tmp_path / "data"), train_per_class=4, val_per_class=1, seed=2)
    out = str(tmp_path / "run")
    run_cli(["sh", "run_train_multi.sh", "-cfg", "configs/pim/demo.yaml", "-data_path", data, "-output", out,
             "-batch_size", "4", "-opts", "TRAIN.EPOCHS", "1", "MODEL.PIM.LAMBDA_C", "0.0", "VISUALDL", "False"],
            NPROC=2, timeout=300)
    assert read_json(os.path.join(out, "metrics.json"))["history"][-1]["val_count"] == 8
    with open(os.path.join(out, "log.txt")) as f:
        assert "they are frozen" in f.read()


def test_other_methods_use_every_parameter():
    assert ClassificationMethod().has_unused_parameters(get_default_config()) is False


# ------------------------------------------------------------------------------- 4. ResMLP layer scales under O2
def test_float16_cannot_hold_resmlps_small_layer_scales():
    tiny = np.finfo(np.float16).tiny                   # smallest normal float16, 2^-14
    assert tiny == pytest.approx(6.1035e-05, rel=1e-4)
    for init in (1e-5, 1e-6):                           # resmlp_24; resmlp_36 / big_24
        assert init < tiny
        assert np.float16(1.0) + np.float16(init) == np.float16(1.0)   # lost in the float16 residual sum
    assert abs(float(np.float16(1e-6)) - 1e-6) / 1e-6 > 0.01           # only ~4 significant bits left


AMP_O2_FP16 = ["AMP.ENABLE", "True", "AMP.LEVEL", "O2", "AMP.DTYPE", "float16"]


@pytest.mark.parametrize("name, extra, refused", [
    ("resmlp_36_224", AMP_O2_FP16, True),
    ("resmlp_big_24_224", AMP_O2_FP16, True),
    ("resmlp_24_224", AMP_O2_FP16, True),                                      # 1e-5 is subnormal too
    ("resmlp_12_224", AMP_O2_FP16, False),                                     # 0.1
    ("resmlp_36_224", AMP_O2_FP16 + ["MODEL.MIXER.INIT_VALUES", "1e-4"], False),
    ("resmlp_36_224", ["AMP.ENABLE", "True", "AMP.LEVEL", "O2", "AMP.DTYPE", "bfloat16"], False),
    ("resmlp_36_224", ["AMP.ENABLE", "True", "AMP.LEVEL", "O1", "AMP.DTYPE", "float16"], False),
    ("resmlp_36_224", ["AMP.LEVEL", "O2"], False),                             # AMP off
])
def test_resmlp_refuses_o2_float16_with_a_subnormal_layer_scale_init(name, extra, refused):
    from resmlp.method import ResMLPMethod
    method = ResMLPMethod()
    cfg = config_for(method, "MODEL.NAME", name, *extra)
    if refused:
        with pytest.raises(ConfigError, match=r"MODEL.MIXER.INIT_VALUES.*below float16.*bfloat16 or AMP.LEVEL O1"):
            method.prepare_training(cfg, None, print)
    else:
        method.prepare_training(cfg, None, print)


def test_resmlp_with_pretrained_weights_is_not_refused_but_told(tmp_path):
    from resmlp.method import ResMLPMethod
    method = ResMLPMethod()
    cfg = config_for(method, "MODEL.NAME", "resmlp_36_224", "MODEL.PRETRAINED", str(tmp_path / "w.pdparams"),
                     "MODEL.MIXER.DEPTH", "1", "MODEL.MIXER.EMBED_DIM", "8", "MODEL.NUM_CLASSES", "3",
                     "DATA.IMAGE_SIZE", "32", *AMP_O2_FP16)
    model = method.build_model(cfg)                    # still the init values 1e-6, as a "pretrained" stand-in
    messages = []
    method.prepare_training(cfg, model, messages.append)
    assert len(messages) == 1 and "below float16" in messages[0] and "ls1" in messages[0]


# ------------------------------------------------------------------------------------ 5. cached resize matrices
def test_resize_bilinear_matrices_are_cached_and_give_identical_results():
    import paddle.nn.functional as F

    from common.layers import RESIZE_MATRICES, resize_bilinear
    RESIZE_MATRICES.store.clear()
    x = paddle.to_tensor(np.random.RandomState(6).rand(2, 3, 5, 7).astype("float32"))
    misses, hits = RESIZE_MATRICES.misses, RESIZE_MATRICES.hits
    first = resize_bilinear(x, (9, 13)).numpy()
    assert (RESIZE_MATRICES.misses - misses, RESIZE_MATRICES.hits - hits) == (2, 0)   # rows and columns built
    second = resize_bilinear(x * 1.0, (9, 13)).numpy()
    assert (RESIZE_MATRICES.misses - misses, RESIZE_MATRICES.hits - hits) == (2, 2)   # both taken from the cache
    np.testing.assert_array_equal(first, second)
    ref = F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(first, ref, atol=1e-6)
    resize_bilinear(x, (5, 14))                         # other sizes (5 -> 5, 7 -> 14): two more matrices
    assert len(RESIZE_MATRICES.store) == 4
    x64 = x.astype("float64")                           # another dtype gets its own matrices
    np.testing.assert_allclose(resize_bilinear(x64, (9, 13)).numpy(), first, atol=1e-6)
    assert len(RESIZE_MATRICES.store) == 6


# ----------------------------------------------------------------------------------- 6. launcher: this node's IP
def test_launcher_names_this_machines_address_among_ips(monkeypatch):
    """Paddle places a node in --ips by resolving its host name (127.0.1.1 on a stock Debian / Ubuntu host, which
    is not in the list: every node would take ranks 0..n-1); the launcher passes the listed address it holds."""
    monkeypatch.delenv("POD_IP", raising=False)
    args = ["-cfg", "configs/resmlp/demo.yaml"]
    cmd = launch.build_command("train", args, gpus=[], nproc=2, ips="203.0.113.7,127.0.0.1")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    cmd = launch.build_command("train", args, gpus=["0"], nproc=1, ips="127.0.0.1,203.0.113.7")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--host" not in launch.build_command("train", args, gpus=[], nproc=2, ips="203.0.113.7,203.0.113.8")
    assert "--host" not in launch.build_command("train", args, gpus=[], nproc=2, ips="node-a,node-b")
    assert "--host" not in launch.build_command("train", args, gpus=[], nproc=2)
    monkeypatch.setenv("POD_IP", "203.0.113.7")         # Paddle's own variable decides
    assert "--host" not in launch.build_command("train", args, gpus=[], nproc=2, ips="203.0.113.7,127.0.0.1")


def test_paddles_launcher_takes_the_host_argument():
    from paddle.distributed.launch.context.args_envs import env_args_mapping, parse_args
    import sys
    argv = sys.argv
    try:
        sys.argv = ["launch", "--ips", "203.0.113.7,127.0.0.1", "--host", "127.0.0.1", "train.py"]
        args, _ = parse_args()
    finally:
        sys.argv = argv
    assert args.host == "127.0.0.1" and args.ips == "203.0.113.7,127.0.0.1" and args.start_port == 6070
    assert env_args_mapping["POD_IP"] == ("host", str)
    assert env_args_mapping["PADDLE_START_PORT"] == ("start_port", int)
