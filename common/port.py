"""Convert a PyTorch / safetensors / PaddleViT checkpoint into a ``.pdparams`` for one of the suite's models.

    python -m common.port --model resmlp_24_224 --src resmlp_24.pth --dst resmlp_24_224.pdparams [--verify]

Models come from the model registry (``common/models.py``: the ``PORT_SPECS`` of each method folder's
``port_weights.py``, found at run time; ``common`` imports no method folder by name). The source is read without torch and without running pickled code. Exit
status: 0 ported (and verified if asked), 1 the weights do not fit / verification failed / unreadable file,
2 bad usage (e.g. unknown model), 3 ``--verify`` asked but torch or the reference model is unavailable, 4 the
destination cannot be written (disk full, read-only), 128 + N stopped by signal N. Every failure is one ``error:``
line (SUITE_TRACEBACK=1 adds the traceback).
"""
import argparse
import os
import sys
import warnings

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def discover_specs():
    """The porting rules of every method, from the model registry (common/models.py: each method folder's
    ``port_weights.PORT_SPECS``). Returns ``(registry {model name: PortSpec}, origin {model name: module},
    errors {module: message})``."""
    from common import models
    specs = models.port_specs()
    registry = {name: spec for name, (_, spec) in specs.items()}
    origin = {name: f"{method}.port_weights" for name, (method, _) in specs.items()}
    return registry, origin, models.discovery_errors()


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m common.port",
        description="Port PyTorch (.pth/.pt/.bin, zip or legacy format), .safetensors or PaddleViT .pdparams "
                    "weights to a .pdparams for one of the suite's models. Nothing in the source file is executed.",
        epilog="Exit status: 0 ok, 1 weights do not fit or verification failed, 2 usage error, "
               "3 --verify needs torch and the reference model package (e.g. timm).")
    p.add_argument("--model", help="model name (see --list)")
    p.add_argument("--src", help="source checkpoint")
    p.add_argument("--dst", help="output .pdparams (written atomically)")
    p.add_argument("--key", default=None,
                   help="checkpoint entry holding the weights, e.g. model_ema (nested: a/b); default: the first of "
                        "state_dict, model, ... that exists")
    p.add_argument("--flavour", default=None,
                   help="source layout (e.g. timm, fb, paddle); default: detected from the keys")
    p.add_argument("--allow-missing", action="append", default=[], metavar="PATTERN",
                   help="model keys the source need not fill (an intentionally new head, e.g. 'head'); repeatable")
    p.add_argument("--num-classes", type=int, default=None, help="build the model with this many classes")
    p.add_argument("--verify", action="store_true",
                   help="build the PyTorch reference model, load the same source into it and compare logits")
    p.add_argument("--verify-batch", type=int, default=2, help="batch size of the random verification input")
    p.add_argument("--tol", type=float, default=1e-5, help="largest accepted max|diff| / max|ref| (default 1e-5)")
    p.add_argument("--list", action="store_true", help="list the models that can be ported and exit")
    return p


def _paddle_dtypes(state):
    out = {}
    for k, v in state.items():
        name = str(v.dtype).replace("paddle.", "")
        try:
            out[k] = np.dtype(name)
        except TypeError:
            pass  # bfloat16 and friends: no cast
    return out


def _print_list(registry, origin, errors, out):
    from common.hub_table import hub_table
    published = {}
    for pname, entry in sorted(hub_table().items()):
        for _, _, spec_name, _ in entry["models"]:
            published.setdefault(spec_name, []).append(pname)
    print("models that can be ported (published names for -pretrained: python -m common.hub --list):", file=out)
    for name in sorted(registry):
        spec = registry[name]
        flavours = ", ".join(f.name for f in spec.flavours)
        print(f"  {name:32s} [{flavours}]  ({origin[name]})", file=out)
        if published.get(name):
            print(f"  {'':32s} -pretrained {' | '.join(dict.fromkeys(published[name]))}", file=out)
    for mod, msg in errors.items():
        print(f"  (could not load {mod}: {msg})", file=out)


def port_file(spec, src, key=None, flavour=None, allow_missing=(), num_classes=None, log=print):
    """Read `src`, port it for `spec`; returns (ported {key: ndarray}, report, model, flavour, source format)."""
    from common.porting import load_checkpoint_any, port_state_dict, unwrap_state_dict

    obj, fmt = load_checkpoint_any(src, return_format=True)
    state, info = unwrap_state_dict(obj, key=key, return_info=True)
    where = "/".join(info["path"]) or "(top level)"
    log(f"source: {src} [{fmt}], weights at {where}, {len(state)} tensors"
        + (f", stripped prefix {', '.join(info['stripped'])}" if info["stripped"] else ""))
    if info["alternatives"]:
        log(f"note: the checkpoint also holds {', '.join(info['alternatives'])} (choose with --key)")
    fl = spec.flavour(flavour) if flavour else spec.detect_flavour(state.keys())
    log(f"layout: {fl.name} ({fl.description})")
    overrides = {} if num_classes is None else {"num_classes": num_classes}
    model = spec.build_model(**overrides)
    target = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in target.items()}
    ported, report = port_state_dict(state, shapes, fl.rules, allow_missing=allow_missing,
                                     target_dtypes=_paddle_dtypes(target))
    with warnings.catch_warnings():  # Paddle warns about each key left out; they are checked right here
        warnings.simplefilter("ignore")
        missing, unexpected = model.set_state_dict(ported)
    missing = [k for k in missing if k not in report.missing_allowed]
    if missing or unexpected:
        raise RuntimeError(f"Paddle refused the ported weights: missing {missing}, unexpected {unexpected}")
    return ported, report, model, fl, fmt


def _reference_source(src, fmt, key):
    """The source weights as the reference framework loads them (torch's own reader where possible)."""
    import torch
    from common.porting import load_checkpoint_any, unwrap_state_dict

    raw = None
    if fmt in ("torch_zip", "torch_legacy"):
        try:
            raw = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:  # e.g. an argparse.Namespace next to the weights
            print(f"verify: torch.load(weights_only=True) refused the file ({type(e).__name__}); "
                  f"using this suite's reader for the reference side", file=sys.stderr)
    elif fmt == "safetensors":
        try:
            from safetensors.torch import load_file
            raw = load_file(src)
        except ImportError:
            pass
    if raw is None:
        raw = load_checkpoint_any(src)
    return unwrap_state_dict(raw, key=key)


def verify(spec, flavour, args, fmt, report, model=None, batch=2, tol=1e-5, log=print):
    """Compare the written .pdparams (in Paddle) with the source loaded into the reference model (torch).

    Returns (exit status, relative difference or None)."""
    from common.porting import seeded_input
    from common.safe_pickle import load_paddle_file

    if spec.reference is None or flavour.to_reference is None:
        log(f"verify: no reference model for '{spec.name}' / layout '{flavour.name}'")
        return 3, None
    try:
        import torch
        ref_model = spec.reference.build(args.num_classes)
    except ImportError as e:
        log(f"verify: needs torch and the reference package ({e}); the .pdparams was written but not verified")
        return 3, None
    import paddle

    if model is None:
        overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
        model = spec.build_model(**overrides)
    written = load_paddle_file(args.dst)
    rng = np.random.RandomState(1234)
    ref_state = flavour.to_reference(_reference_source(args.src, fmt, args.key), ref_model)
    ref_state = dict(ref_state)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k in report.missing_allowed:  # same fresh values on both sides
        value = (0.02 * rng.standard_normal(shapes[k])).astype(np.float32)
        written[k] = value
        if spec.reference.from_target is None:
            log(f"verify: cannot give '{k}' to the reference model (the spec has no from_target)")
            return 3, None
        rk, rv = spec.reference.from_target(k, value)
        ref_state[rk] = rv
    missing, unexpected = model.set_state_dict(written)
    if missing or unexpected:
        log(f"verify: the written file does not fit the Paddle model: missing {missing}, unexpected {unexpected}")
        return 1, None
    ref_state = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
                 for k, v in ref_state.items()}
    result = ref_model.load_state_dict(ref_state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        log(f"verify: the reference model does not take the source: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}")
        return 1, None
    ref_model.eval()
    model.eval()
    x = seeded_input((batch,) + tuple(spec.input_size), seed=0)
    # models with more inputs than the image (e.g. metadata) name them in spec.extra["verify_inputs"]: batch -> arrays
    extras = list(spec.extra["verify_inputs"](batch)) if spec.extra.get("verify_inputs") else []
    with torch.no_grad():
        ref_out = ref_model(torch.from_numpy(x), *[torch.from_numpy(e) for e in extras]).float().numpy()
    with paddle.no_grad():
        out = model(paddle.to_tensor(x), *[paddle.to_tensor(e) for e in extras]).astype("float32").numpy()
    if out.shape != ref_out.shape:
        log(f"verify: output shapes differ: paddle {out.shape}, reference {ref_out.shape}")
        return 1, None
    diff = float(np.abs(out.astype(np.float64) - ref_out).max())
    scale = float(np.abs(ref_out).max())
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    ok = rel <= tol
    log(f"verify ({spec.reference.name}, batch {batch}): max|diff| = {diff:.3e}, max|ref| = {scale:.3e}, "
        f"relative = {rel:.3e} -> {'OK' if ok else 'FAILED'} (tolerance {tol:g})")
    return (0 if ok else 1), rel


def _port_status(code):
    """This CLI's documented status for a source that cannot be ported is 1 (the suite-wide 2 for bad input)."""
    return 1 if code == 2 else code


def port_to_file(spec, src, dst, label="", **port_kwargs):
    """`port_file`, then the result written atomically to `dst` and summarised; a bad source is one error line.
    Returns (exit status, port_file's result or None)."""
    from common.checkpoint import atomic_save
    from common.errors import report as report_error
    from common.outdir import check_output_file
    try:
        check_output_file(dst, "--dst")
        result = port_file(spec, src, **port_kwargs)
        ported, report = result[0], result[1]
        atomic_save(ported, dst)
    except (Exception, KeyboardInterrupt) as e:  # the boundary: one error line and the documented exit code
        return _port_status(report_error(e)), None
    print(report.summary())
    print(f"wrote {dst} ({len(ported)} tensors{label})")
    return 0, result


def main(argv=None):
    args = build_parser().parse_args(argv)
    registry, origin, errors = discover_specs()
    if args.list:
        _print_list(registry, origin, errors, sys.stdout)
        return 0
    missing_args = [f"--{n}" for n in ("model", "src", "dst") if not getattr(args, n)]
    if missing_args:
        print(f"error: {', '.join(missing_args)} required (see --help)", file=sys.stderr)
        return 2
    if args.model not in registry:
        print(f"error: unknown model '{args.model}'. Known models: {', '.join(sorted(registry)) or '(none)'}",
              file=sys.stderr)
        for mod, msg in errors.items():
            print(f"  note: {mod} could not be loaded: {msg}", file=sys.stderr)
        return 2
    spec = registry[args.model]

    status, result = port_to_file(spec, args.src, args.dst, f", model {args.model}", key=args.key,
                                  flavour=args.flavour, allow_missing=args.allow_missing, num_classes=args.num_classes)
    if status:
        return status
    _, report, model, flavour, fmt = result
    if args.verify:
        status, _ = verify(spec, flavour, args, fmt, report, model=model, batch=args.verify_batch, tol=args.tol)
        return status
    return 0


if __name__ == "__main__":
    from common.errors import run_entry
    sys.exit(run_entry(main))
