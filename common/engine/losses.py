"""Classification losses, always computed in float32."""
import paddle
import paddle.nn.functional as F

from common.data.targets import smoothed_targets


def soft_target_cross_entropy(logits, soft_targets):
    logp = F.log_softmax(logits.astype("float32"), axis=-1)
    return -(soft_targets.astype("float32") * logp).sum(axis=-1).mean()


class ClassificationLoss:
    """Hard labels (int64 [N]) with optional smoothing, or soft targets ([N, C], e.g. from mixup)."""

    def __init__(self, num_classes, smoothing=0.0, mode="uniform"):
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.mode = mode

    def __call__(self, logits, targets):
        if targets.ndim == 2 and targets.shape[-1] == self.num_classes and paddle.is_floating_point(targets):
            return soft_target_cross_entropy(logits, targets)
        if self.smoothing > 0:
            return soft_target_cross_entropy(
                logits, smoothed_targets(targets, self.num_classes, self.smoothing, self.mode))
        return F.cross_entropy(logits.astype("float32"), targets.astype("int64").reshape([-1]))
