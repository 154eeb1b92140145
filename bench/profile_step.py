"""Where a training step's time goes, op by op, in Paddle and in PyTorch on the same model.

    python -m bench.profile_step                      # ResMLP-24 and Swin-T, batch 16, 2 threads, 2 rounds
    python -m bench.profile_step --models resmlp_12 --batch 4 --top 8
    python -m bench.profile_step --models resnet50 --rounds 1   # against torchvision's

One training step (forward, backward, SGD-momentum update, float32) is profiled after a warm-up step, each framework
in a fresh process (paddle.profiler / torch.profiler); the rounds alternate the frameworks and the median round (by
step time) is printed. Ops are the frameworks' top-level ones, so their times add up to the step: Paddle's dygraph
ops (`matmul`) and backward nodes (`MatmulGradNode`); PyTorch's top-level aten ops (`aten::linear`) and autograd
functions (`AddmmBackward0`). Swin-T is the suite's backbone + LayerNorm + mean + head against timm's
swin_tiny_patch4_window7_224 (non-fused attention, timm's default for Swin).
"""
import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys

from bench.archs import REPO

MODELS = ("resmlp_24", "swin_t")


def paddle_model(name):
    import paddle
    import paddle.nn as nn
    if name.startswith("resmlp"):
        from resmlp.resmlp import create_resmlp
        return create_resmlp(name + "_224", num_classes=1000)
    if name == "resnet50":
        from common.backbones.resnet import create_resnet
        return create_resnet("resnet50", num_classes=1000)
    from common.backbones.swin import create_swin

    class SwinClassifier(nn.Layer):   # the classification form of timm's model: last stage, LayerNorm, mean, head
        def __init__(self):
            super().__init__()
            self.backbone = create_swin("swin_tiny_patch4_window7_224")
            self.norm = nn.LayerNorm(768)
            self.head = nn.Linear(768, 1000)

        def forward(self, x):
            return self.head(paddle.mean(self.norm(self.backbone(x)[-1]), axis=1))
    return SwinClassifier()


def torch_model(name):
    if name == "resnet50":
        import torchvision
        return torchvision.models.resnet50(weights=None, num_classes=1000)
    import timm
    timm_name = name + "_224" if name.startswith("resmlp") else "swin_tiny_patch4_window7_224"
    return timm.create_model(timm_name, pretrained=False, num_classes=1000)


def paddle_name(event_name):
    """'matmul dygraph[1.2 ms]' -> 'matmul'; 'Global_MatmulGradNode[..]' -> 'MatmulGradNode'."""
    name = re.sub(r"\[.*\]$", "", event_name).replace(" dygraph", "")
    name = name.replace("Global_", "").replace("GradNodeFinal", "GradNode")
    return name.replace("GradNodePyLayer__", "custom backward ")   # the suite's PyLayers (common/layers.py)


def profile_paddle(name, batch, threads):
    import numpy as np
    import paddle
    import paddle.profiler as profiler

    from bench.worker import paddle_cpu_setup
    paddle_cpu_setup(threads, ())   # as the suite's processes run: threads, MKL path, heap
    paddle.set_device("cpu")
    model = paddle_model(name)
    model.train()
    opt = paddle.optimizer.Momentum(learning_rate=1e-4, momentum=0.9, parameters=model.parameters())
    x = paddle.to_tensor(np.random.rand(batch, 3, 224, 224).astype("float32"))

    def step():
        model(x).mean().backward()
        opt.step()
        opt.clear_grad()
    step()
    trace = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"paddle_profile_{os.getpid()}.json")
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda p: None)  # no ./profiler_log
    prof.start()
    step()
    prof.step()
    prof.stop()
    prof.export(trace, format="json")
    with open(trace) as f:
        events = json.load(f)["traceEvents"]
    os.remove(trace)
    ops = collections.defaultdict(lambda: [0, 0.0])
    for e in top_level([e for e in events if e.get("cat") == "Operator" and "dur" in e]):
        op = ops[paddle_name(e["name"])]
        op[0] += 1
        op[1] += e["dur"] / 1000.0
    total = sum(e["dur"] / 1000.0 for e in events if e.get("cat") == "ProfileStep" and "dur" in e)
    return ops, total


def top_level(events):
    """Events not inside another one of the list on the same thread (a custom backward's own matmuls are part of
    its node's time)."""
    out, open_until = [], {}
    for e in sorted(events, key=lambda e: (e.get("tid"), e["ts"], -e["dur"])):
        if e["ts"] >= open_until.get(e.get("tid"), float("-inf")):
            out.append(e)
            open_until[e.get("tid")] = e["ts"] + e["dur"]
    return out


def torch_name(event_name):
    return event_name.replace("autograd::engine::evaluate_function: ", "")


def profile_torch(name, batch, threads):
    import time

    import numpy as np
    import torch
    torch.set_num_threads(threads)
    model = torch_model(name)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.from_numpy(np.random.rand(batch, 3, 224, 224).astype("float32"))

    def step():
        model(x).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        step()
        total = (time.perf_counter() - t) * 1000.0
    ops = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        # top-level: forward aten ops called from Python, autograd nodes run by the backward engine
        if e.cpu_parent is None and (e.name.startswith("aten::") or e.name.startswith("autograd::engine")):
            op = ops[torch_name(e.name)]
            op[0] += 1
            op[1] += e.cpu_time_total / 1000.0
        elif e.cpu_parent is None and e.name.startswith("Optimizer.step"):
            op = ops["optimizer step"]
            op[0] += 1
            op[1] += e.cpu_time_total / 1000.0
    return ops, total


def child(args):
    run = profile_paddle if args.framework == "paddle" else profile_torch
    ops, total = run(args.model, args.batch, args.threads)
    print(json.dumps({"ops": {k: v for k, v in ops.items()}, "total_ms": total}))


def measure(model, framework, args):
    cmd = [sys.executable, "-m", "bench.profile_step", "--child", framework, "--models", model, "--batch",
           str(args.batch), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{framework} {model}: " + "\n".join(proc.stderr.strip().splitlines()[-5:]))


def table(framework, res, top):
    rows = sorted(res["ops"].items(), key=lambda kv: -kv[1][1])
    listed = sum(ms for _, (_, ms) in rows)
    lines = [f"| {framework} op | calls | total ms |", "|---|---|---|"]
    lines += [f"| {op} | {calls} | {ms:.1f} |" for op, (calls, ms) in rows[:top]]
    rest = rows[top:]
    lines.append(f"| ({len(rest)} other ops) | {sum(c for _, (c, _) in rest)} | {sum(m for _, (_, m) in rest):.1f} |")
    lines.append(f"| **step** (ops: {listed:.0f}) | | **{res['total_ms']:.0f}** |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=["resmlp_12", "resmlp_24", "resmlp_36",
                                                                       "swin_t", "resnet50"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--child", choices=["paddle", "torch"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.framework, args.model = args.child, args.models[0]
        return child(args)
    for model in args.models:
        runs = {"paddle": [], "torch": []}
        for r in range(args.rounds):   # alternate the order so that both frameworks see the same machine state
            for fw in (("paddle", "torch") if r % 2 == 0 else ("torch", "paddle")):
                runs[fw].append(measure(model, fw, args))
                print(f"round {r + 1} {model} {fw}: {runs[fw][-1]['total_ms']:.0f} ms", file=sys.stderr, flush=True)
        med = {fw: sorted(rs, key=lambda x: x["total_ms"])[(len(rs) - 1) // 2] for fw, rs in runs.items()}
        steps = {fw: statistics.median(x["total_ms"] for x in rs) for fw, rs in runs.items()}
        print(f"\n{model}, batch {args.batch}, {args.threads} threads, float32: step {steps['paddle']:.0f} ms "
              f"(Paddle) vs {steps['torch']:.0f} ms (PyTorch), median of {args.rounds} round(s)\n")
        for fw in ("paddle", "torch"):
            print(table(fw, med[fw], args.top) + "\n")


if __name__ == "__main__":
    sys.exit(main())
