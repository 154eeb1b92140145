"""Single ops where Paddle 3.3's CPU kernels are the limit, Paddle against PyTorch on the same arrays.

    python -m bench.op_gap                 # ResMLP-12 / Swin-T shapes at batch 16, 2 threads, 7 interleaved rounds

Both frameworks run in this one process, alternating round by round; printed: median ms per call and the ratio
Paddle / PyTorch (> 1: Paddle is slower), plus the form the suite uses instead where it has one.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

from bench.archs import REPO  # noqa: F401  (puts the repository on sys.path)

M, C, H = 16 * 196, 384, 1536           # ResMLP-12 at batch 16: tokens x channels, hidden width
SWIN = (16, 56, 56, 96, 7)              # Swin-T stage 1 at batch 16: b, h, w, c, window


def _ms(fn, rounds):
    fn()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def cases():
    """name -> (paddle fn, torch fn, suite's form or None): each builds its inputs once."""
    import paddle
    import paddle.nn.functional as F
    import torch

    from common import layers
    rng = np.random.default_rng(0)
    g = rng.standard_normal((M, H)).astype("float32")
    pg, tg = paddle.to_tensor(g), torch.from_numpy(g)
    xc = rng.standard_normal((M, C)).astype("float32")
    pxc, txc = paddle.to_tensor(xc), torch.from_numpy(xc)
    out = {}
    # the bias / per-channel-scale gradient of every Linear, Affine and layer scale
    out["sum over rows [3136, 1536] -> [1536] (bias gradient)"] = (
        lambda: pg.sum(0), lambda: tg.sum(0), lambda: layers.sum_leading(pg))
    # GELU's backward (exact erf form)
    from paddle import _C_ops
    tx = tg.clone().requires_grad_(False)
    out["gelu_grad [3136, 1536]"] = (lambda: _C_ops.gelu_grad(pg, pg, False),
                                     lambda: torch.ops.aten.gelu_backward(tg, tx), None)
    out["gelu forward [3136, 1536]"] = (lambda: F.gelu(pg), lambda: torch.nn.functional.gelu(tg), None)
    # LayerNorm forward + backward (Swin: every block twice)
    pln, tln = paddle.nn.LayerNorm(C), torch.nn.LayerNorm(C)
    px = paddle.to_tensor(xc, stop_gradient=False)
    tx2 = torch.from_numpy(xc).requires_grad_(True)
    dy = rng.standard_normal((M, C)).astype("float32")
    pdy, tdy = paddle.to_tensor(dy), torch.from_numpy(dy)
    fast_ln = layers.LayerNorm(C)
    out["layer_norm fwd+bwd [3136, 384]"] = (lambda: paddle.autograd.backward([pln(px)], [pdy]),
                                             lambda: tln(tx2).backward(tdy),
                                             lambda: paddle.autograd.backward([fast_ln(px)], [pdy]))
    # elementwise products: every composed backward (and the suite's own) is made of these
    row = rng.standard_normal((M, 1)).astype("float32")
    prow, trow = paddle.to_tensor(row), torch.from_numpy(row)
    pdy_nograd = paddle.to_tensor(dy)
    out["multiply [3136, 384] * [3136, 384]"] = (lambda: pxc * pdy_nograd, lambda: txc * tdy, None)
    out["multiply by a per-row factor [3136, 384] * [3136, 1]"] = (lambda: pxc * prow, lambda: txc * trow, None)
    # the strided copy behind reshape-after-transpose (Swin's window partition)
    b, h, w, c, ws = SWIN
    a = rng.standard_normal((b, h, w, c)).astype("float32")
    pa, ta = paddle.to_tensor(a), torch.from_numpy(a)
    order = np.arange(h * w).reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1)
    porder = paddle.to_tensor(order)
    pflat = pa.reshape([b, h * w, c])
    out["window partition (6-D transpose + copy) [16, 56, 56, 96]"] = (
        lambda: pa.reshape([b, h // ws, ws, w // ws, ws, c]).transpose([0, 1, 3, 2, 4, 5]).reshape([-1, ws * ws, c]),
        lambda: ta.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c),
        lambda: paddle.gather(pflat, porder, axis=1))
    # a plain GEMM, for scale: not a gap
    pw = paddle.to_tensor(rng.standard_normal((C, H)).astype("float32"))
    tw = torch.from_numpy(pw.numpy())
    out["GEMM [3136, 384] x [384, 1536] (reference)"] = (lambda: paddle.matmul(pxc, pw), lambda: txc @ tw, None)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import paddle
    import torch

    from bench.worker import paddle_cpu_setup
    paddle_cpu_setup(args.threads, ())   # as the suite's processes run: threads, MKL path, heap
    torch.set_num_threads(args.threads)
    paddle.set_device("cpu")
    print("| op | Paddle ms | PyTorch ms | Paddle / PyTorch | suite's form, Paddle ms |\n|---|---|---|---|---|")
    for name, (pf, tf, suite) in cases().items():
        t = {"paddle": [], "torch": [], "suite": []}
        for r in range(args.rounds):   # alternate so that both see the same machine state
            fns = [("paddle", pf), ("torch", tf)] + ([("suite", suite)] if suite else [])
            for key, fn in (fns if r % 2 == 0 else fns[::-1]):
                t[key] += _ms(fn, 1)
        med = {k: statistics.median(v) for k, v in t.items() if v}
        form = f"{med['suite']:.2f}" if "suite" in med else "-"
        print(f"| {name} | {med['paddle']:.2f} | {med['torch']:.2f} | {med['paddle'] / med['torch']:.1f}x | "
              f"{form} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
