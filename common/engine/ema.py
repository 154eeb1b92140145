"""Exponential moving average of a model's weights (and float buffers), updated after each optimizer step.

The average is kept in float32 whatever the model's dtype: under AMP O2 the parameters are float16 / bfloat16, and
with a decay of 0.9999+ each update, (1 - decay) * (w - ema), is below half a float16 ulp of the average, so a
float16 average would never move. The average is cast to the model's dtype only when it is swapped in.
"""
import contextlib

import paddle

from common.checkpoint import as_float32


def set_state_cast(model, state):
    """model.set_state_dict with every value cast to the dtype of the model's own tensor (Paddle asserts equal
    dtypes): float32 weights go into an O2 (float16 / bfloat16) model and back."""
    own = model.state_dict()
    cast = {}
    for key, value in state.items():
        value = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
        target = own.get(key)
        cast[key] = value.astype(target.dtype) if target is not None and value.dtype != target.dtype else value
    model.set_state_dict(cast)


class ModelEma:
    def __init__(self, model, decay=0.9999):
        self.decay = float(decay)
        self.state = {k: as_float32(v.detach()).clone() for k, v in model.state_dict().items()}

    @paddle.no_grad()
    def update(self, model):
        for key, value in model.state_dict().items():
            ema = self.state[key]
            if paddle.is_floating_point(value):
                ema.set_value(ema * self.decay + value.detach().astype(ema.dtype) * (1.0 - self.decay))
            else:
                ema.set_value(value)

    def state_dict(self):
        return dict(self.state)

    def set_state_dict(self, state):
        missing = set(self.state) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks keys: {sorted(missing)[:10]}")
        for key, value in state.items():
            if key in self.state:
                self.state[key].set_value(paddle.to_tensor(value).astype(self.state[key].dtype))

    @contextlib.contextmanager
    def swapped_into(self, model):
        """Temporarily load the EMA weights into `model` (for evaluation), restoring the live weights after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        set_state_cast(model, self.state)
        try:
            yield model
        finally:
            set_state_cast(model, live)
