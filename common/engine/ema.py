"""Exponential moving average of a model's weights (and float buffers), updated after each optimizer step."""
import contextlib

import paddle


class ModelEma:
    def __init__(self, model, decay=0.9999):
        self.decay = float(decay)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

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
        model.set_state_dict(self.state)
        try:
            yield model
        finally:
            model.set_state_dict(live)
