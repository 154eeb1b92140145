"""Learning-rate schedules evaluated per optimizer step: linear warm-up, then cosine, step decay or constant."""
import math

from paddle.optimizer.lr import LRScheduler


class WarmupSchedule(LRScheduler):
    """lr(step) for step = number of optimizer updates done so far.

    Warm-up: linear from `warmup_start_lr` to `base_lr` over `warmup_steps`.
    cosine: half cosine from `base_lr` to `min_lr` over the remaining `total_steps - warmup_steps`.
    step: `base_lr * decay_rate ** (epoch // decay_epochs)`, epoch counted from the start of training.
    constant: `base_lr`.
    """

    def __init__(self, base_lr, total_steps, steps_per_epoch, warmup_steps=0, warmup_start_lr=0.0, min_lr=0.0,
                 name="cosine", decay_epochs=30, decay_rate=0.1, last_epoch=-1):
        if name not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown LR schedule '{name}'")
        self.base = float(base_lr)
        self.total_steps = max(1, int(total_steps))
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr = float(min_lr)
        self.name = name
        self.decay_epochs = decay_epochs
        self.decay_rate = decay_rate
        super().__init__(learning_rate=base_lr, last_epoch=last_epoch)

    def lr_at(self, step):
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.base - self.warmup_start_lr) * step / self.warmup_steps
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + 0.5 * (self.base - self.min_lr) * (1.0 + math.cos(math.pi * t))
        if self.name == "step":
            epoch = step // self.steps_per_epoch
            return self.base * self.decay_rate ** (epoch // self.decay_epochs)
        return self.base

    def get_lr(self):
        return self.lr_at(self.last_epoch)


def scaled_lrs(config, total_batch):
    """(base, warmup start, min) learning rates, linearly scaled to the real total batch when asked."""
    t = config.TRAIN
    scale = total_batch / t.LINEAR_SCALED_LR if t.LINEAR_SCALED_LR > 0 else 1.0
    return t.BASE_LR * scale, t.WARMUP_START_LR * scale, t.MIN_LR * scale


def build_scheduler(config, steps_per_epoch, total_batch):
    t = config.TRAIN
    base, start, low = scaled_lrs(config, total_batch)
    warmup = t.WARMUP_ITERS if t.WARMUP_ITERS > 0 else int(round(t.WARMUP_EPOCHS * steps_per_epoch))
    return WarmupSchedule(base, t.EPOCHS * steps_per_epoch, steps_per_epoch, warmup_steps=warmup,
                          warmup_start_lr=start, min_lr=low, name=t.LR_SCHEDULER.NAME,
                          decay_epochs=t.LR_SCHEDULER.DECAY_EPOCHS, decay_rate=t.LR_SCHEDULER.DECAY_RATE)
