"""Small layers shared by several architectures."""
import paddle
import paddle.nn as nn


def drop_path(x, drop_prob=0.0, training=False):
    """Per-sample stochastic depth: zero whole residual branches, rescale the kept ones."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    mask = paddle.floor(keep_prob + paddle.rand(shape, dtype=x.dtype))
    return x / keep_prob * mask


class DropPath(nn.Layer):
    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def dropout(p):
    """nn.Dropout(p), or Identity when p is 0: Paddle still runs its dropout op (forward and backward) in training at
    p = 0, where it changes nothing."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class Mlp(nn.Layer):
    """Linear -> GELU -> dropout -> Linear -> dropout (timm `Mlp` naming: fc1, fc2)."""

    def __init__(self, in_features, hidden_features, out_features=None, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def bilinear_matrix(in_size, out_size):
    """[out_size, in_size] float32 weights of 1-D linear interpolation with half-pixel centres (align_corners=False,
    PyTorch's and Paddle's align_mode=0 bilinear, no antialiasing): row d holds the two taps of output pixel d."""
    import numpy as np
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    m = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(m, (np.arange(out_size), i0), 1.0 - w1)
    np.add.at(m, (np.arange(out_size), i1), w1)
    return m.astype("float32")


class _MatrixCache:
    """Interpolation matrices as device tensors, built once per (input size, output size, dtype, place): the FPN
    resizes the same shapes every step, and rebuilding meant numpy work plus a host-to-device copy per call."""

    def __init__(self, limit=64):
        self.limit, self.store, self.hits, self.misses = limit, {}, 0, 0

    def get(self, in_size, out_size, like):
        if not paddle.in_dynamic_mode():   # tracing for export: the matrix becomes a constant of the program
            return paddle.to_tensor(bilinear_matrix(in_size, out_size).T, dtype=like.dtype)
        key = (int(in_size), int(out_size), str(like.dtype), str(like.place))
        m = self.store.get(key)
        if m is None:
            self.misses += 1
            if len(self.store) >= self.limit:
                self.store.clear()
            m = paddle.to_tensor(bilinear_matrix(in_size, out_size).T, dtype=like.dtype, place=like.place)
            self.store[key] = m
        else:
            self.hits += 1
        return m


RESIZE_MATRICES = _MatrixCache()


def resize_bilinear(x, size):
    """Bilinear resize of [N, C, H, W] to `size` (align_corners=False) as two 2-D matrix products, one per axis.
    Same result as F.interpolate(mode="bilinear") up to float rounding. Written this way for exported models:
    Paddle Inference 3.3 cannot run the bilinear_interp op with oneDNN (the whole graph would lose its oneDNN
    kernels), and its oneDNN matmul gave wrong results for the broadcast 4-D form A_h @ x @ A_w^T (0.9 relative
    error on PIM's FPN), while 2-D products are exact there."""
    _, c, h, w = x.shape
    out_h, out_w = [int(s) for s in size]
    cols = RESIZE_MATRICES.get(w, out_w, x)     # [w, out_w]
    rows = RESIZE_MATRICES.get(h, out_h, x)     # [h, out_h]
    y = paddle.matmul(x.reshape([-1, w]), cols).reshape([-1, c, h, out_w]).transpose([0, 1, 3, 2])
    y = paddle.matmul(y.reshape([-1, h]), rows).reshape([-1, c, out_w, out_h])
    return y.transpose([0, 1, 3, 2])
