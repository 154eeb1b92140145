"""Optimizers with parameter groups: no weight decay on biases, 1-D tensors (norms) and what the model names in
`no_weight_decay()` (layer scales, Affine), and optional per-parameter learning-rate multipliers."""
import paddle

LOW_PRECISION = (paddle.float16, paddle.bfloat16)


class GlobalNormClip(paddle.nn.ClipGradByGlobalNorm):
    """Global-norm clipping whose norm is always summed in float32 (float64 when a gradient is float64).

    Paddle 3.3's own `ClipGradByGlobalNorm._dygraph_clip` (paddle/nn/clip.py) takes each gradient's squared norm with
    `_squared_l2_norm`, which keeps the gradient's dtype unless the private switch
    `paddle.nn.clip._clip_by_global_norm_using_mp_type` is on (nothing in Paddle turns it on). Under AMP O2 float16
    the gradients are float16, so one tensor whose norm exceeds 256 (squared norm > 65504) gives an inf global norm,
    the factor clip_norm / inf = 0, and the step is silently zeroed; the float32 sum only begins after that.
    Here every squared norm is taken of the gradient cast to float32, and the scaled gradient is cast back to its own
    dtype (CPU Paddle has no float16 multiply kernel). As in Paddle's version, clip-exempt parameters
    (`need_clip=False`) pass through untouched and pairs without a gradient are dropped."""

    @paddle.no_grad()
    def _dygraph_clip(self, params_grads):
        def clipped(p, g):
            return g is not None and getattr(p, "need_clip", True) is not False

        squares = []
        for p, g in params_grads:
            if clipped(p, g):
                wide = g.astype("float32") if g.dtype in LOW_PRECISION else g
                squares.append(paddle.sum(paddle.square(wide)).reshape([1]))
        if not squares:
            return params_grads
        sum_dtype = "float64" if any(s.dtype == paddle.float64 for s in squares) else "float32"
        global_norm = paddle.sqrt(paddle.concat([s.astype(sum_dtype) for s in squares]).sum())
        limit = paddle.full([], self.clip_norm, dtype=sum_dtype)
        factor = limit / paddle.maximum(global_norm, limit)     # 1 when the norm is already within the limit
        out = []
        for p, g in params_grads:
            if g is None:
                continue                                        # dropped, as Paddle's own clip does
            if not clipped(p, g):
                out.append((p, g))
            elif g.dtype in LOW_PRECISION:
                out.append((p, (g.astype("float32") * factor.astype("float32")).astype(g.dtype)))
            else:
                out.append((p, g * factor.astype(g.dtype)))
        return out


def trainable_named_parameters(model):
    # parameters() also lists BatchNorm statistics; only those with gradients are optimised
    return [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]


def takes_weight_decay(name, param, skip_names):
    return not (len(param.shape) <= 1 or name.endswith(".bias") or name in skip_names)


def build_param_groups(model, weight_decay, lr_mult_fn=None):
    """Group parameters by (weight decay on/off, lr multiplier); Paddle treats a group's lr as a multiplier."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups = {}
    for name, param in trainable_named_parameters(model):
        wd = weight_decay if takes_weight_decay(name, param, skip) else 0.0
        mult = float(lr_mult_fn(name)) if lr_mult_fn else 1.0
        group = groups.setdefault((wd, mult), {"params": [], "names": [], "weight_decay": wd, "learning_rate": mult})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(config, model, scheduler, lr_mult_fn=None, multi_precision=False):
    opt = config.TRAIN.OPTIMIZER
    groups = build_param_groups(model, config.TRAIN.WEIGHT_DECAY, lr_mult_fn)
    param_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    clip = GlobalNormClip(config.TRAIN.GRAD_CLIP) if config.TRAIN.GRAD_CLIP > 0 else None
    name = opt.NAME.lower()
    if name == "adamw":
        optimizer = paddle.optimizer.AdamW(
            learning_rate=scheduler, parameters=param_groups, beta1=opt.BETAS[0], beta2=opt.BETAS[1],
            epsilon=opt.EPS, weight_decay=config.TRAIN.WEIGHT_DECAY, grad_clip=clip, multi_precision=multi_precision)
    elif name in ("sgd", "momentum") and (opt.MOMENTUM > 0 or opt.NESTEROV):
        # same update as torch.optim.SGD(momentum, nesterov); weight decay as L2 on the gradient
        optimizer = paddle.optimizer.Momentum(
            learning_rate=scheduler, momentum=opt.MOMENTUM, parameters=param_groups, use_nesterov=opt.NESTEROV,
            weight_decay=config.TRAIN.WEIGHT_DECAY, grad_clip=clip, multi_precision=multi_precision)
    elif name in ("sgd", "momentum"):
        optimizer = paddle.optimizer.SGD(learning_rate=scheduler, parameters=param_groups,
                                         weight_decay=config.TRAIN.WEIGHT_DECAY, grad_clip=clip,
                                         multi_precision=multi_precision)
    else:
        raise ValueError(f"unknown optimizer '{opt.NAME}'")
    optimizer.group_names = [g["names"] for g in groups]  # for logging and tests
    return optimizer
