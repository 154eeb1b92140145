"""Class targets as float32 rows: one-hot, and one-hot with label smoothing (mixup and the losses build on these)."""
import paddle
import paddle.nn.functional as F


def one_hot(target, num_classes, on_value=1.0, off_value=0.0):
    """int64 [N] (or [N, 1]) -> float32 [N, num_classes] with `on_value` at the label and `off_value` elsewhere."""
    target = paddle.reshape(paddle.cast(target, "int64"), [-1])
    hot = F.one_hot(target, num_classes).astype("float32")
    return hot * (on_value - off_value) + off_value


def smoothed_targets(labels, num_classes, smoothing, mode="uniform"):
    """One-hot with label smoothing. uniform: eps/C off-target, 1-eps+eps/C on target (timm, Paddle).
    others: eps/(C-1) off-target, 1-eps on target (some references, e.g. Dynamic MLP)."""
    if mode == "uniform":
        off, on = smoothing / num_classes, 1.0 - smoothing + smoothing / num_classes
    elif mode == "others":
        off, on = smoothing / max(1, num_classes - 1), 1.0 - smoothing
    else:
        raise ValueError(f"unknown smoothing mode '{mode}'")
    return one_hot(labels, num_classes, on, off)
