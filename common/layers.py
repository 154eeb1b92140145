"""Small layers shared by several architectures."""
import paddle
import paddle.nn as nn


class _ScaleBySampleFn(paddle.autograd.PyLayer):
    """x * m for a per-sample factor m [B, 1, ...] that takes no gradient. Paddle's multiply keeps both inputs for
    its backward; only m is needed, so x (a whole residual branch) is not kept alive until the backward: ~20 MB less
    per ResMLP-24 block at batch 16 (README, Benchmark)."""

    @staticmethod
    def forward(ctx, x, m):
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx, dy):
        m, = ctx.saved_tensor()
        return dy * m, None


def drop_path(x, drop_prob=0.0, training=False):
    """Per-sample stochastic depth: zero whole residual branches, rescale the kept ones (timm's arithmetic: the
    0/1 mask divided by the keep probability, then one product)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    scale = paddle.floor(keep_prob + paddle.rand(shape, dtype=x.dtype)) / keep_prob
    if paddle.in_dynamic_mode() and paddle.is_grad_enabled() and not x.stop_gradient:
        return _ScaleBySampleFn.apply(x, scale)
    return x * scale


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


def fast_cpu_backward(x):
    """Whether to route an op through the hand-written backwards below: dygraph training on CPU in float32, where
    Paddle 3.3's own backward reduces a gradient over the batch and token axes with a slow single-pass reduce
    (`sum` over the leading axis of a [3136, 1536] gradient: 15.5 ms against 0.3 ms as a GEMV; bench/op_gap.py).
    Anywhere else (GPU, AMP, no_grad evaluation, graphs traced for export) the plain ops run."""
    return _eager_cpu_float32(x) and paddle.is_grad_enabled()


def _eager_cpu_float32(x):
    """Dygraph on CPU in float32 without autocast: where the CPU-specific forms below may run at all."""
    return (paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32
            and not paddle.amp.is_autocast_enabled())


def _rows(t):
    return t.reshape([-1, t.shape[-1]])


def sum_leading(t):
    """Sum over every axis but the last, as a ones-row GEMV (a multi-threaded GEMM instead of Paddle's CPU reduce)."""
    t2 = _rows(t)
    return paddle.matmul(paddle.ones([1, t2.shape[0]], dtype=t2.dtype), t2).reshape([t2.shape[1]])


def _wants_grad(*tensors):
    return [t is not None and not t.stop_gradient for t in tensors]


def _linear_one_gemm(x, weight, bias):
    """x @ W + b as one GEMM with the bias folded in (addmm on the 2-D view of x). Paddle 3.3's F.linear on CPU is a
    GEMM and then a broadcast add that took as long as the GEMM at ResMLP's fc1 ([3136, 384] x [384, 1536]: 34 ms
    against 18 ms; 2 Intel Xeon cores, README Benchmark). Same numbers to float rounding (~1e-7 relative)."""
    out = paddle.addmm(bias, x.reshape([-1, x.shape[-1]]), weight)
    return out.reshape(list(x.shape[:-1]) + [weight.shape[1]])


class _LinearFn(paddle.autograd.PyLayer):
    """x @ W + b with Paddle's forward; the backward as three GEMMs on 2-D views (the bias gradient a GEMV)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.wants = _wants_grad(x, weight, bias)
        return _linear_one_gemm(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        want_x, want_w, want_b = ctx.wants
        d2 = _rows(dy)
        dx = paddle.matmul(d2, weight, transpose_y=True).reshape(x.shape) if want_x else None
        dw = paddle.matmul(_rows(x), d2, transpose_x=True) if want_w else None
        db = sum_leading(d2) if want_b else None
        return dx, dw, db


class _LinearNoBiasFn(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        ctx.wants = _wants_grad(x, weight) + [False]
        return paddle.matmul(x, weight)

    @staticmethod
    def backward(ctx, dy):
        return _LinearFn.backward(ctx, dy)[:2]


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose CPU training backward avoids Paddle's slow bias-gradient
    reduction and works on 2-D views: 0.76x the time of F.linear's forward + backward at ResMLP's fc1 (batch 16); its
    CPU forward in dygraph (training and evaluation) is one GEMM with the bias folded in (_linear_one_gemm)."""

    def forward(self, x):
        if not fast_cpu_backward(x):
            if self.bias is not None and _eager_cpu_float32(x):
                return _linear_one_gemm(x, self.weight, self.bias)   # dygraph evaluation on CPU
            return super().forward(x)
        if self.bias is None:
            return _LinearNoBiasFn.apply(x, self.weight)
        return _LinearFn.apply(x, self.weight, self.bias)


class _LayerNormFn(paddle.autograd.PyLayer):
    """Paddle's layer_norm forward; the backward from matrix-vector products and whole-tensor products (Paddle
    3.3's CPU layer_norm_grad takes 188 ms on Swin-T's first-stage [50176, 96] at batch 16, this 83 ms; PyTorch 6).
    Saves the input and the weight only, as Paddle's op does (it also keeps two per-row statistics)."""

    @staticmethod
    def forward(ctx, x, weight, bias, epsilon):
        ctx.save_for_backward(x, weight)
        ctx.epsilon = epsilon
        ctx.wants = _wants_grad(x, weight, bias)
        return paddle.nn.functional.layer_norm(x, [x.shape[-1]], weight, bias, epsilon)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        want_x, want_w, want_b = ctx.wants
        c = x.shape[-1]
        x2, d2 = _rows(x), _rows(dy)
        row_mean = paddle.full([c, 1], 1.0 / c, dtype=x.dtype)   # row means as a GEMV
        centred = x2 - paddle.matmul(x2, row_mean)
        rstd = paddle.rsqrt(paddle.matmul(centred * centred, row_mean) + ctx.epsilon)
        xhat = centred * rstd
        dx = None
        if want_x:
            g = d2 * weight
            dx = ((g - paddle.matmul(g, row_mean) - xhat * paddle.matmul(g * xhat, row_mean)) * rstd).reshape(x.shape)
        return (dx, sum_leading(d2 * xhat) if want_w else None, sum_leading(d2) if want_b else None)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last axis (same parameters and state-dict keys) whose CPU training backward avoids
    Paddle's slow layer_norm_grad; everywhere else (evaluation, export, GPU, AMP) Paddle's own op."""

    def forward(self, x):
        if not fast_cpu_backward(x) or self.weight is None or self.bias is None or len(self._normalized_shape) != 1:
            return super().forward(x)
        return _LayerNormFn.apply(x, self.weight, self.bias, self._epsilon)


class _ScaleShiftFn(paddle.autograd.PyLayer):
    """x * scale + shift with per-channel (last-axis) scale and shift; their gradients summed by GEMV."""

    @staticmethod
    def forward(ctx, x, scale, shift=None):
        ctx.save_for_backward(x, scale)
        ctx.wants = _wants_grad(x, scale, shift)
        ctx.shapes = scale.shape, None if shift is None else shift.shape
        y = x * scale
        return y if shift is None else y + shift

    @staticmethod
    def backward(ctx, dy):
        x, scale = ctx.saved_tensor()
        want_x, want_scale, want_shift = ctx.wants
        grads = [dy * scale if want_x else None,
                 sum_leading(dy * x).reshape(ctx.shapes[0]) if want_scale else None]
        if ctx.shapes[1] is not None:
            grads.append(sum_leading(dy).reshape(ctx.shapes[1]) if want_shift else None)
        return tuple(grads)


def scale_shift(x, scale, shift=None):
    """x * scale (+ shift), scale and shift per channel of the last axis (any shape that broadcasts as [C])."""
    if fast_cpu_backward(x):
        return _ScaleShiftFn.apply(x, scale) if shift is None else _ScaleShiftFn.apply(x, scale, shift)
    return x * scale if shift is None else x * scale + shift


def _token_bias(bias):
    return bias.unsqueeze(-1)   # [N] -> [N, 1]: one value per token, broadcast over channels


class _TokenMixFn(paddle.autograd.PyLayer):
    """y[b] = W^T @ x[b] + bias[:, None] for x [B, N, C]: the weight's gradient is one batched GEMM summed over the
    batch by GEMV, the bias's two GEMVs."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.wants = _wants_grad(x, weight, bias)
        return paddle.matmul(weight, x, transpose_x=True) + _token_bias(bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        want_x, want_w, want_b = ctx.wants
        b, n, c = dy.shape
        dx = paddle.matmul(weight, dy) if want_x else None
        dw = sum_leading(paddle.matmul(x, dy, transpose_y=True).reshape([b, n * n])).reshape([n, n]) \
            if want_w else None
        db = None
        if want_b:   # sum over channels (GEMV with a ones column), then over the batch
            per_token = paddle.matmul(_rows(dy), paddle.ones([c, 1], dtype=dy.dtype)).reshape([b, n])
            db = sum_leading(per_token)
        return dx, dw, db


def token_mix(x, linear):
    """`linear` (an nn.Linear(N, N)) applied along the token axis of x [B, N, C]: the same numbers as
    linear(x.transpose([0, 2, 1])).transpose([0, 2, 1]) without the two transposed copies (and their two in the
    backward). Graphs traced for export keep the transposed form: Paddle Inference 3.3's oneDNN matmul mis-computed
    the broadcast batched form elsewhere in the suite (see resize_bilinear)."""
    if not paddle.in_dynamic_mode() or linear.bias is None:
        return linear(x.transpose([0, 2, 1])).transpose([0, 2, 1])
    if fast_cpu_backward(x):
        return _TokenMixFn.apply(x, linear.weight, linear.bias)
    return paddle.matmul(linear.weight, x, transpose_x=True) + _token_bias(linear.bias)


class _AddOverBatchFn(paddle.autograd.PyLayer):
    """x + bias, bias [1, ...] shared by every entry of x's first axis; its gradient summed over that axis by GEMV."""

    @staticmethod
    def forward(ctx, x, bias):
        ctx.wants = _wants_grad(x, bias)
        ctx.bias_shape = bias.shape
        return x + bias

    @staticmethod
    def backward(ctx, dy):
        want_x, want_bias = ctx.wants
        db = None
        if want_bias:
            rows = dy.reshape([dy.shape[0], -1])
            db = paddle.matmul(paddle.ones([1, rows.shape[0]], dtype=dy.dtype), rows).reshape(ctx.bias_shape)
        return dy if want_x else None, db


def add_over_batch(x, bias):
    """x + bias where bias has x's shape with a leading 1 (e.g. attention biases shared by all images)."""
    if fast_cpu_backward(x):
        return _AddOverBatchFn.apply(x, bias)
    return x + bias


class _PermuteTokensFn(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.inverse = inverse
        return paddle.gather(x, order, axis=1)

    @staticmethod
    def backward(ctx, dy):   # a permutation's gradient is the inverse permutation (a gather, not a scatter-add)
        return paddle.gather(dy, ctx.inverse, axis=1), None, None


def permute_tokens(x, order, inverse):
    """x[:, order] for x [B, L, C] and a permutation `order` of range(L) (`inverse`: its inverse): one row gather in
    place of reshape/transpose/roll chains, whose strided copies Paddle 3.3 runs 7-25x slower than a gather on CPU
    (bench/op_gap.py)."""
    if paddle.is_grad_enabled() and not x.stop_gradient:
        return _PermuteTokensFn.apply(x, order, inverse)
    return paddle.gather(x, order, axis=1)


class Mlp(nn.Layer):
    """Linear -> GELU -> dropout -> Linear -> dropout (timm `Mlp` naming: fc1, fc2)."""

    def __init__(self, in_features, hidden_features, out_features=None, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = dropout(drop)
        self.fc2 = Linear(hidden_features, out_features)
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


def _resize_2d(x, cols, rows):
    """x [N, C, H, W] -> x @ cols along W, then @ rows along H: [N, C, rows.shape[1], cols.shape[1]]."""
    _, c, h, w = x.shape
    out_h, out_w = rows.shape[1], cols.shape[1]
    y = paddle.matmul(x.reshape([-1, w]), cols).reshape([-1, c, h, out_w]).transpose([0, 1, 3, 2])
    y = paddle.matmul(y.reshape([-1, h]), rows).reshape([-1, c, out_w, out_h])
    return y.transpose([0, 1, 3, 2])


class _ResizeFn(paddle.autograd.PyLayer):
    """The resize with a backward that keeps nothing of the forward: the gradient of x @ A is dy @ A^T, so only the
    two small resize matrices are needed (Paddle's matmuls kept x and the [N, C, W', H] intermediate: ~150 MB for
    PIM's FPN at batch 16)."""

    @staticmethod
    def forward(ctx, x, out_h, out_w):
        h, w = x.shape[2], x.shape[3]
        ctx.cols, ctx.rows = RESIZE_MATRICES.get(w, out_w, x), RESIZE_MATRICES.get(h, out_h, x)
        return _resize_2d(x, ctx.cols, ctx.rows)

    @staticmethod
    def backward(ctx, dy):
        return _resize_2d(dy, ctx.cols.t(), ctx.rows.t())


def resize_bilinear(x, size):
    """Bilinear resize of [N, C, H, W] to `size` (align_corners=False) as two 2-D matrix products, one per axis.
    Same result as F.interpolate(mode="bilinear") up to float rounding. Written this way for exported models:
    Paddle Inference 3.3 cannot run the bilinear_interp op with oneDNN (the whole graph would lose its oneDNN
    kernels), and its oneDNN matmul gave wrong results for the broadcast 4-D form A_h @ x @ A_w^T (0.9 relative
    error on PIM's FPN), while 2-D products are exact there."""
    out_h, out_w = [int(s) for s in size]
    if fast_cpu_backward(x) and not x.stop_gradient:
        return _ResizeFn.apply(x, out_h, out_w)
    return _resize_2d(x, RESIZE_MATRICES.get(x.shape[3], out_w, x), RESIZE_MATRICES.get(x.shape[2], out_h, x))
