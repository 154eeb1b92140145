"""Export for deployment: `python <method>/export.py -cfg ... -pretrained ... -output DIR [-onnx]`.

Writes DIR/model.json + DIR/model.pdiparams (`paddle.jit.save` of the eval-mode model, returning the logits of the
method's main head) and DIR/inference.json with everything preprocessing needs (size, resize, crop_pct,
interpolation, mean, std, class names, the inputs), the method, the model name, the class count and the resolved
config (`config`, yaml text). With -onnx, also DIR/model.onnx through paddle2onnx. -cfg may be left out for a
checkpoint of this suite (its stored config is used); -use_ema exports its EMA weights.
`common.deploy.ExportedClassifier` and `python -m common.deploy` load either.

The folder is written whole or not at all: the export goes into a temporary sibling folder, which is renamed into
place once complete (an earlier export there is replaced only then). A folder holding anything but an export is
refused before the work. paddle2onnx runs without its Polygraphy constant-folding step, which pip-installs
onnx_graphsurgeon from NVIDIA's index at run time (README, "Inference and deployment").
"""
import argparse
import inspect
import json
import os
import shutil
import time

import numpy as np
import paddle
import paddle.nn as nn

from common.config import ConfigError
from common.data.transforms import eval_resize_size
from common.errors import OutputError, RunExistsError, SuiteError, os_error_reason, run_entry
from common.inference import add_model_flags, class_names_for, load_model
from common.outdir import check_writable, fsync_folder

MODEL_PREFIX = "model"
META_FILE = "inference.json"
# what an export folder may hold (paddle.jit.save writes .json or .pdmodel, .pdiparams and sometimes .pdiparams.info)
EXPORT_FILES = {MODEL_PREFIX + ext for ext in (".json", ".pdmodel", ".pdiparams", ".pdiparams.info", ".onnx")}
EXPORT_FILES.add(META_FILE)
ONNX_INSTALL = "pip install -r requirements-onnx.txt (paddle2onnx and onnxruntime)"
TMP_MARK, OLD_MARK = ".tmp", ".old"   # siblings of the export folder while it is written / replaced


class ExportError(SuiteError):
    """The model could not be converted (e.g. an operator paddle2onnx does not support)."""


class MainHead(nn.Layer):
    """The model as deployed: inputs -> logits of the head the method stands behind."""

    def __init__(self, method, model):
        super().__init__()
        self.model = model
        self._method = method
        self._head = method.main_head_of(model)

    def forward(self, image, extra0=None, extra1=None):
        # named inputs (to_static cannot trace *args); a method may declare up to two extra inputs
        extras = [e for e in (extra0, extra1) if e is not None]
        outputs = self.model(image, *extras)
        return self._method.eval_heads(self.model, outputs)[self._head]


def input_specs(method, config):
    size = config.DATA.IMAGE_SIZE
    specs = [paddle.static.InputSpec([None, config.DATA.IMAGE_CHANNELS, size, size], "float32", "image")]
    extras = method.export_inputs(config)
    if len(extras) > 2:
        raise ValueError(f"export supports up to two inputs besides the image, {method.name} declares {len(extras)}")
    for name, shape, dtype in extras:
        specs.append(paddle.static.InputSpec([None] + list(shape), dtype, name))
    return specs


def preprocessing(config, names):
    return {
        "image_size": config.DATA.IMAGE_SIZE,
        "resize_size": eval_resize_size(config),
        "resize_mode": "square" if config.DATA.SQUARE_RESIZE else "short_side",
        "crop_pct": config.DATA.CROP_PCT,
        "interpolation": config.DATA.INTERPOLATION,
        "mean": list(config.DATA.MEAN),
        "std": list(config.DATA.STD),
        "class_names": names,
        "num_classes": config.MODEL.NUM_CLASSES,
    }


def export_model(method, config, model, out_dir, names=None, onnx=False, opset=13):
    """Write the export folder `out_dir` whole (see the module docstring); returns the inference.json content."""
    check_export_target(out_dir)
    parent, base = os.path.split(os.path.abspath(out_dir))
    remove_stale_siblings(parent, base)
    tmp = os.path.join(parent, f".{base}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        meta = _write_export(method, config, model, tmp, names, onnx, opset)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_folder(tmp)
        replace_folder(tmp, out_dir)
    except OSError as e:
        kept = "the earlier export there is intact" if os.path.isdir(out_dir) else "nothing was written"
        raise OutputError(f"cannot write the export folder {out_dir}: {os_error_reason(e)}; {kept}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def check_export_target(out_dir):
    """Before any work: `out_dir` is new, empty or an earlier export (which the new one replaces), and its parent
    folder is writable. Nothing is created but the parent folders."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"-output {out_dir} is a file; give a folder for the export")
    if os.path.isdir(out_dir):
        others = sorted(set(os.listdir(out_dir)) - EXPORT_FILES)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise RunExistsError(f"-output {out_dir} holds files that are not an export ({shown}); an export "
                                 f"replaces its whole folder, so give a new folder (or an earlier export folder)")
    check_writable(os.path.dirname(os.path.abspath(out_dir)))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_siblings(parent, base):
    """Folders left by an export that was killed: its temporary folder, and an earlier export moved aside while
    being replaced (put back when the killed export had not yet renamed its new folder into place)."""
    for name in os.listdir(parent):
        for mark in (TMP_MARK, OLD_MARK):
            prefix = f".{base}{mark}"
            pid = name[len(prefix):]
            if not (name.startswith(prefix) and pid.isdigit()) or _pid_alive(int(pid)):
                continue
            path = os.path.join(parent, name)
            if mark == OLD_MARK and not os.path.exists(os.path.join(parent, base)):
                os.replace(path, os.path.join(parent, base))
            else:
                shutil.rmtree(path, ignore_errors=True)


def replace_folder(new, dst):
    """Rename the complete folder `new` to `dst`; an existing `dst` is moved aside first and removed after."""
    parent, base = os.path.split(os.path.abspath(dst))
    if not os.path.exists(dst):
        os.rename(new, dst)
    else:
        old = os.path.join(parent, f".{base}{OLD_MARK}{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        try:
            os.rename(new, dst)
        except BaseException:
            os.rename(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_folder(parent)


def save_graph(wrapped, specs, folder):
    """paddle.jit.save of the eval-mode layer `wrapped` as `folder`/model.*; returns (graph path, params path): the
    graph is model.json (PIR) or model.pdmodel, whichever this Paddle writes."""
    wrapped.eval()
    prefix = os.path.join(folder, MODEL_PREFIX)
    paddle.jit.save(paddle.jit.to_static(wrapped, input_spec=specs, full_graph=True), prefix)
    graph = prefix + ".json" if os.path.exists(prefix + ".json") else prefix + ".pdmodel"
    return graph, prefix + ".pdiparams"


def _write_export(method, config, model, out_dir, names, onnx, opset):
    model.eval()
    specs = input_specs(method, config)
    graph, params = save_graph(MainHead(method, model), specs, out_dir)
    meta = preprocessing(config, names or [str(i) for i in range(config.MODEL.NUM_CLASSES)])
    sources = method.export_input_sources(config)   # how common.deploy builds each extra input
    inputs = []
    for s in specs:
        inputs.append({"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype).replace("paddle.", "")})
        if s.name in sources:
            inputs[-1]["source"] = sources[s.name]
    meta.update({"method": method.name, "model_name": config.MODEL.NAME, "head": method.main_head_of(model),
                 "config": config.dump(), "inputs": inputs})
    meta["files"] = {"graph": os.path.basename(graph), "params": os.path.basename(params)}
    if onnx:
        meta["files"]["onnx"] = export_onnx(graph, params, os.path.join(out_dir, MODEL_PREFIX + ".onnx"), opset)
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


class AllHeads(nn.Layer):
    """The model as evaluation scores it: inputs -> the logits of each of `names` (the method's eval heads), in
    that order."""

    def __init__(self, method, model, names):
        super().__init__()
        self.model = model
        self._method = method
        self._names = list(names)

    def forward(self, image, extra0=None, extra1=None):
        extras = [e for e in (extra0, extra1) if e is not None]
        heads = self._method.eval_heads(self.model, self.model(image, *extras))
        return [heads[n] for n in self._names]


# How far the exported model's logits may be from the dygraph model's on the first batch (times max(1, max |logit|))
# before evaluation stays in dygraph. Rounding differences are ~1e-6 (oneDNN's kernels, other summation orders), and
# ~1e-3 for PIM with random weights, whose selector may order near-tied tokens differently; a kernel computing the
# wrong thing differs by the logits' own size.
AGREE_TOL = {"float32": 1e-3, "half": 5e-2}


class PredictorEval:
    """`heads_fn` for `evaluate`: the model exported (every eval head) to a temporary folder and run by Paddle
    Inference, 2-4x faster than dygraph on CPU (README, Benchmark). The first batch is scored by the dygraph model
    and run through the predictor too; only when the two agree (`AGREE_TOL`) does the predictor score the rest, so a
    wrong kernel can cost speed but never a wrong number.

    `min_seconds=None` (-predictor): always tried, and an export that fails is an error. Otherwise (the automatic
    choice) only when the first batch's time says the remaining `batches - 1` would take dygraph at least
    `min_seconds` (the export takes 2-5 s for the suite's models on 2 cores; a tiny model stays in dygraph), and an
    export that fails falls back to dygraph with a warning."""

    def __init__(self, method, config, model, device, log, batches, min_seconds=None):
        self.method, self.config, self.model, self.device = method, config, model, device
        self.log, self.batches, self.min_seconds = log, batches, min_seconds
        self._run = None            # the scorer of every batch after the first

    def __call__(self, images, extras):
        if self._run is not None:
            return self._run(images, extras)
        start = time.perf_counter()
        heads = self._dygraph(images, extras)
        for v in heads.values():
            v.numpy()   # waits for the device: the time is the batch's
        dygraph_left = (time.perf_counter() - start) * (self.batches - 1)
        if self.min_seconds is not None and dygraph_left < self.min_seconds:
            self._run = self._dygraph
        else:
            self._run = self._choose(heads, images, extras)
        return heads

    def _dygraph(self, images, extras):
        from common.engine.trainer import dygraph_heads
        return dygraph_heads(self.model, self.method, images, extras, self.config, self.device)

    def _choose(self, heads, images, extras):
        names = list(heads)
        if not all(bool(paddle.isfinite(v.astype("float32")).all()) for v in heads.values()):
            return self._dygraph   # evaluate() stops on non-finite logits; no export is worth making
        try:
            run = self._predictor(names)
            fast = run(images, extras)
        except Exception as e:   # to_static / jit.save / Paddle Inference: many error types; none may cost the run
            if self.min_seconds is None:
                raise ExportError(f"-predictor: the model could not be run through Paddle Inference: "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                  ) from e
            self.log(f"warning: the exported model could not be run ({type(e).__name__}); evaluating in dygraph")
            return self._dygraph
        gap, tol = self._gap(heads, fast)
        if not gap <= tol:   # NaN included
            self.log(f"warning: the exported model's logits differ from the dygraph model's on the first batch "
                     f"(max |difference| {gap:.3g} > {tol:.3g}); evaluating in dygraph instead")
            return self._dygraph
        self.log(f"evaluating through the exported model in Paddle Inference (heads {', '.join(names)}; first "
                 f"batch: max |logit difference| to dygraph {gap:.2g})")
        return run

    @staticmethod
    def _gap(heads, fast):
        """(max |fast - dygraph| over every head, the tolerance): NaN or inf when they cannot be compared."""
        gaps, tol = [], float("inf")
        for name, logits in heads.items():
            ref = logits.astype("float32")
            if list(fast[name].shape) != list(ref.shape):
                return float("inf"), tol
            half = logits.dtype in (paddle.float16, paddle.bfloat16)
            tol = min(tol, AGREE_TOL["half" if half else "float32"] * max(1.0, float(ref.abs().max())))
            gaps.append(float((fast[name].astype("float32") - ref).abs().max()))
        return float(np.max(gaps)), tol   # np.max keeps a NaN, Python's max may drop it

    def _predictor(self, names):
        import tempfile

        from common import dist
        from common.deploy import create_predictor, parse_device, run_predictor
        self.model.eval()
        with tempfile.TemporaryDirectory(prefix="eval_predictor_") as folder:   # the predictor keeps it in memory
            graph, params = save_graph(AllHeads(self.method, self.model, names),
                                       input_specs(self.method, self.config), folder)
            predictor = create_predictor(graph, params, threads=dist.cpu_threads(), gpu_id=parse_device(self.device))
        if len(predictor.get_output_names()) != len(names):
            raise ExportError(f"the exported model has {len(predictor.get_output_names())} outputs for "
                              f"{len(names)} heads")

        def run(images, extras):
            outputs = run_predictor(predictor, [np.ascontiguousarray(t.numpy()) for t in [images, *extras]])
            return {n: paddle.to_tensor(out) for n, out in zip(names, outputs)}
        return run


def export_onnx(graph, params, dst, opset=13):
    """paddle2onnx's converter (with its own graph optimiser) and ONNX checker, without the Polygraphy constant
    folding that paddle2onnx 2.x runs by default (`optimize_tool="polygraphy"`): that step sets
    POLYGRAPHY_AUTOINSTALL_DEPS=1 and Polygraphy then pip-installs onnx_graphsurgeon from pypi.ngc.nvidia.com during
    the export. `optimize_tool="None"` is one of paddle2onnx's own choices (its --optimize_tool flag); ONNX Runtime
    folds constants itself when it loads the model."""
    try:
        import paddle2onnx
    except ImportError:
        raise ConfigError(f"ONNX export needs paddle2onnx: {ONNX_INSTALL}") from None
    options = {"opset_version": opset, "enable_onnx_checker": True}
    if "optimize_tool" in inspect.signature(paddle2onnx.export).parameters:
        options["optimize_tool"] = "None"
    try:
        paddle2onnx.export(graph, params, dst, **options)
    except Exception as e:   # paddle2onnx logs the converter's error, then fails on the missing result
        raise ExportError(f"paddle2onnx could not convert the model to ONNX (opset {opset}; its log above says "
                          f"why): {type(e).__name__}: {e}") from e
    if not os.path.isfile(dst):
        raise ExportError(f"paddle2onnx wrote no {os.path.basename(dst)} (opset {opset}; its log above says why)")
    return os.path.basename(dst)


def export_main(method, argv=None):
    p = add_model_flags(argparse.ArgumentParser(description=f"{method.name}: export for Paddle Inference / ONNX"))
    p.add_argument("-output", type=str, required=True, help="folder for model.json, model.pdiparams, inference.json")
    p.add_argument("-onnx", action="store_true", help="also write model.onnx (needs paddle2onnx)")
    p.add_argument("-opset", type=int, default=13)
    args = p.parse_args(argv)
    return run_entry(_export, method, args)


def _export(method, args):
    if args.onnx:   # dependencies and the output folder are checked before the work; nothing is written yet
        try:
            import paddle2onnx  # noqa: F401
        except ImportError:
            raise ConfigError(f"-onnx needs paddle2onnx: {ONNX_INSTALL}") from None
    check_export_target(args.output)
    config, model = load_model(method, args)
    meta = export_model(method, config, model, args.output, class_names_for(config, args.data_path),
                        onnx=args.onnx, opset=args.opset)
    print(f"exported {config.MODEL.NAME} to {args.output}: " + ", ".join(meta["files"].values()) + f", {META_FILE}")
    return meta
