"""Optimizers with parameter groups: no weight decay on biases, 1-D tensors (norms) and what the model names in
`no_weight_decay()` (layer scales, Affine), and optional per-parameter learning-rate multipliers."""
import paddle


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
    clip = paddle.nn.ClipGradByGlobalNorm(config.TRAIN.GRAD_CLIP) if config.TRAIN.GRAD_CLIP > 0 else None
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
