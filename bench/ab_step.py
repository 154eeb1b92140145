"""Before/after of a model change in one process: the same training step (or no-grad forward) of the working tree's
model and of the model as a git revision wrote it, interleaved round by round.

    python -m bench.ab_step --model resmlp_24 --base HEAD              # training step, batch 16, 2 threads
    python -m bench.ab_step --model swin_t --base HEAD --mode eval

The base revision's model files (common/layers.py, resmlp/resmlp.py, common/backbones/swin.py) are loaded under
other module names next to the working tree's; both models get the same weights. Printed: median step times, the
median of the per-round ratios (new / base: < 1 is faster), and how far the two models' outputs and gradients are
apart (max |new - base| / max |base|).
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.archs import REPO

FILES = {"layers": "common/layers.py", "resmlp": "resmlp/resmlp.py", "swin": "common/backbones/swin.py"}


def load_base(rev):
    """The base revision's model modules, wired to each other instead of to the working tree's."""
    folder = tempfile.mkdtemp(prefix="ab_base_")
    mods = {}
    for key, path in FILES.items():
        dst = os.path.join(folder, key + "_base.py")
        with open(dst, "wb") as f:
            f.write(subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True,
                                   capture_output=True).stdout)
        spec = importlib.util.spec_from_file_location(f"ab_base_{key}", dst)
        mods[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[key])
        if key != "layers":   # their `from common.layers import ...` names -> the base revision's layers
            for name in ("DropPath", "Mlp", "dropout"):
                if hasattr(mods[key], name):
                    setattr(mods[key], name, getattr(mods["layers"], name))
            if hasattr(mods[key], "layers"):
                mods[key].layers = mods["layers"]
    return mods


def build(model, resmlp_mod, swin_mod):
    import paddle
    import paddle.nn as nn
    if model.startswith("resmlp"):
        return resmlp_mod.create_resmlp(model + "_224", num_classes=1000)

    class SwinClassifier(nn.Layer):
        def __init__(self):
            super().__init__()
            # no stochastic depth: both models must compute the same numbers
            self.backbone = swin_mod.create_swin("swin_tiny_patch4_window7_224", drop_path_rate=0.0)
            self.norm = nn.LayerNorm(768)
            self.head = nn.Linear(768, 1000)

        def forward(self, x):
            return self.head(paddle.mean(self.norm(self.backbone(x)[-1]), axis=1))
    return SwinClassifier()


def stepper(model, x, mode):
    import paddle
    if mode == "eval":
        model.eval()

        def step():
            with paddle.no_grad():
                return model(x).numpy()
        return step
    model.train()
    opt = paddle.optimizer.Momentum(learning_rate=1e-4, momentum=0.9, parameters=model.parameters())

    def step():
        model(x).mean().backward()
        opt.step()
        opt.clear_grad()
    return step


def rel(a, b):
    import numpy as np
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def agreement(new, base, x):
    """Output and gradient distance of the two models on the same input (before any update)."""
    new.train()
    base.train()
    outs = []
    for m in (new, base):
        y = m(x)
        y.mean().backward()
        outs.append((y.numpy(), {n: p.grad.numpy().copy() for n, p in m.named_parameters() if p.grad is not None}))
        m.clear_gradients()
    grads = max(rel(outs[0][1][n], g) for n, g in outs[1][1].items())
    return rel(outs[0][0], outs[1][0]), grads


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resmlp_24", choices=["resmlp_12", "resmlp_24", "resmlp_36", "swin_t"])
    p.add_argument("--base", default="HEAD")
    p.add_argument("--mode", default="train", choices=["train", "eval"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import numpy as np
    import paddle

    from common.backbones import swin
    from resmlp import resmlp
    from bench.worker import paddle_cpu_setup
    paddle_cpu_setup(args.threads, ())   # as the suite's processes run: threads, MKL path, heap
    paddle.set_device("cpu")
    base_mods = load_base(args.base)
    paddle.seed(0)
    new = build(args.model, resmlp, swin)
    base = build(args.model, base_mods["resmlp"], base_mods["swin"])
    head = new.head.weight   # a zero head (ResMLP's init) would leave every other gradient zero
    head.set_value(np.random.RandomState(1).normal(0, 0.02, head.shape).astype("float32"))
    base.set_state_dict(new.state_dict())
    x = paddle.to_tensor(np.random.RandomState(0).rand(args.batch, 3, 224, 224).astype("float32"))
    out_rel, grad_rel = agreement(new, base, x)
    steps = {"new": stepper(new, x, args.mode), "base": stepper(base, x, args.mode)}
    for s in steps.values():
        s()   # warm-up
    times = {"new": [], "base": []}
    ratios = []
    for r in range(args.rounds):
        for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
            t = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t)
        ratios.append(times["new"][-1] / times["base"][-1])
        print(f"round {r + 1}: base {times['base'][-1] * 1000:.0f} ms, new {times['new'][-1] * 1000:.0f} ms",
              file=sys.stderr, flush=True)
    print(f"{args.model} {args.mode} batch {args.batch}, {args.threads} threads, {args.rounds} interleaved rounds: "
          f"base ({args.base}) {statistics.median(times['base']) * 1000:.0f} ms, working tree "
          f"{statistics.median(times['new']) * 1000:.0f} ms, median ratio new/base {statistics.median(ratios):.3f}; "
          f"outputs differ by {out_rel:.1e}, gradients by {grad_rel:.1e} (relative)")


if __name__ == "__main__":
    sys.exit(main())
