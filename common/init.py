"""Weight initialisers matching PyTorch/timm conventions (Paddle's defaults differ).

Paddle Linear weights are stored [in, out]; fan_in/fan_out below account for that.
"""
import math

import numpy as np
import paddle


def _fans(param, linear):
    shape = param.shape
    if linear:  # paddle Linear: [in, out]
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _set(param, value):
    param.set_value(paddle.to_tensor(np.asarray(value, dtype="float32")).astype(param.dtype))


def zeros_(param):
    _set(param, np.zeros(param.shape))


def ones_(param):
    _set(param, np.ones(param.shape))


def constant_(param, value):
    _set(param, np.full(param.shape, value))


def uniform_(param, low, high):
    _set(param, np.random.uniform(low, high, size=param.shape))


def normal_(param, std=1.0, mean=0.0):
    _set(param, np.random.normal(mean, std, size=param.shape))


def trunc_normal_(param, std=0.02, a=-2.0, b=2.0):
    """Normal(0, std) truncated to [a, b] (absolute bounds, like timm)."""
    out = np.random.normal(0.0, std, size=param.shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = np.random.normal(0.0, std, size=int(bad.sum()))
        bad = (out < a) | (out > b)
    _set(param, out)


def xavier_uniform_(param, linear=True):
    fan_in, fan_out = _fans(param, linear)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    _set(param, np.random.uniform(-bound, bound, size=param.shape))


def lecun_normal_(param, linear=False):
    fan_in, _ = _fans(param, linear)
    # truncated normal with the variance correction for truncation at 2 std (timm/flax)
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    trunc_normal_(param, std=std, a=-2 * std, b=2 * std)


def kaiming_normal_(param, mode="fan_out", nonlinearity_gain=math.sqrt(2.0), linear=False):
    fan_in, fan_out = _fans(param, linear)
    fan = fan_out if mode == "fan_out" else fan_in
    normal_(param, std=nonlinearity_gain / math.sqrt(fan))


def kaiming_uniform_torch_default_(param, linear=False):
    """torch.nn.Linear/Conv default: kaiming_uniform with a=sqrt(5) -> bound 1/sqrt(fan_in)."""
    fan_in, _ = _fans(param, linear)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    _set(param, np.random.uniform(-bound, bound, size=param.shape))


def reset_like_torch(layer):
    """What a freshly constructed PyTorch module holds, for every Linear / Conv / BatchNorm / LayerNorm in `layer`
    (itself included): weight and bias ~ U(+-1/sqrt(fan_in)) (kaiming-uniform, a=sqrt(5)), norms at unit scale and
    zero shift, BatchNorm running statistics at mean 0 and variance 1. Paddle's defaults differ."""
    for sub in [layer] + list(layer.sublayers()):
        if isinstance(sub, (paddle.nn.Linear, paddle.nn.Conv1D, paddle.nn.Conv2D)):
            linear = isinstance(sub, paddle.nn.Linear)
            kaiming_uniform_torch_default_(sub.weight, linear=linear)
            if sub.bias is not None:
                fan_in, _ = _fans(sub.weight, linear)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                uniform_(sub.bias, -bound, bound)
        elif isinstance(sub, (paddle.nn.layer.norm._BatchNormBase, paddle.nn.BatchNorm)):
            reset_batch_norm_(sub)
        elif isinstance(sub, paddle.nn.LayerNorm) and sub.weight is not None:
            ones_(sub.weight)
            zeros_(sub.bias)


def reset_batch_norm_(bn):
    """A freshly built BatchNorm: unit scale, zero shift, running mean 0 and variance 1."""
    ones_(bn.weight)
    zeros_(bn.bias)
    zeros_(bn._mean)
    ones_(bn._variance)


def init_transformer_(model, linear_layer, norm_layer):
    """timm's transformer initialisation of every Linear (truncated normal 0.02, zero bias) and LayerNorm (unit
    scale, zero shift) under `model`."""
    for layer in model.sublayers():
        if isinstance(layer, linear_layer):
            trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                zeros_(layer.bias)
        elif isinstance(layer, norm_layer):
            ones_(layer.weight)
            zeros_(layer.bias)
