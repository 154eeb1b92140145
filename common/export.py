"""Export for deployment: `python <method>/export.py -cfg ... -pretrained ... -output DIR [-onnx]`.

Writes DIR/model.json + DIR/model.pdiparams (`paddle.jit.save` of the eval-mode model, returning the logits of the
method's main head) and DIR/inference.json with everything preprocessing needs (size, resize, crop_pct,
interpolation, mean, std, class names, the inputs), the method, the model name, the class count and the resolved
config (`config`, yaml text). With -onnx, also DIR/model.onnx through paddle2onnx. -cfg may be left out for a
checkpoint of this suite (its stored config is used); -use_ema exports its EMA weights.
`common.deploy.ExportedClassifier` loads either.
"""
import argparse
import json
import os
import sys

import paddle
import paddle.nn as nn

from common.config import ConfigError
from common.data.transforms import eval_resize_size
from common.errors import run_entry
from common.inference import add_model_flags, class_names_for, load_model
from common.outdir import check_writable

MODEL_PREFIX = "model"
META_FILE = "inference.json"


class MainHead(nn.Layer):
    """The model as deployed: inputs -> logits of the head the method stands behind."""

    def __init__(self, method, model):
        super().__init__()
        self.model = model
        self._method = method

    def forward(self, image, extra0=None, extra1=None):
        # named inputs (to_static cannot trace *args); a method may declare up to two extra inputs
        extras = [e for e in (extra0, extra1) if e is not None]
        outputs = self._method.forward(self.model, image, extras)
        return self._method.eval_heads(outputs)[self._method.main_head]


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
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    wrapped = MainHead(method, model)
    wrapped.eval()
    specs = input_specs(method, config)
    static = paddle.jit.to_static(wrapped, input_spec=specs, full_graph=True)
    prefix = os.path.join(out_dir, MODEL_PREFIX)
    paddle.jit.save(static, prefix)
    meta = preprocessing(config, names or [str(i) for i in range(config.MODEL.NUM_CLASSES)])
    meta.update({"method": method.name, "model_name": config.MODEL.NAME, "head": method.main_head,
                 "config": config.dump(),
                 "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype).replace("paddle.", "")}
                            for s in specs]})
    graph = prefix + ".json" if os.path.exists(prefix + ".json") else prefix + ".pdmodel"
    meta["files"] = {"graph": os.path.basename(graph), "params": MODEL_PREFIX + ".pdiparams"}
    if onnx:
        meta["files"]["onnx"] = export_onnx(graph, prefix + ".pdiparams", prefix + ".onnx", opset)
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def predictor_heads(method, config, model, device="cpu"):
    """`heads_fn` for `evaluate`: the model exported to a temporary folder and run by Paddle Inference (the fast
    path); returns {main head: logits}."""
    import tempfile

    from common import dist
    from common.deploy import ExportedClassifier
    gpu_id = int(device.split(":")[1]) if device.startswith("gpu:") else (0 if device == "gpu" else None)
    with tempfile.TemporaryDirectory(prefix="eval_predictor_") as folder:   # the predictor holds the model in memory
        export_model(method, config, model, folder)
        clf = ExportedClassifier(folder, threads=dist.cpu_threads(), gpu_id=gpu_id)

    def heads_fn(images, extras):
        logits = clf.run(images.numpy(), *[e.numpy() for e in extras])
        return {method.main_head: paddle.to_tensor(logits)}
    return heads_fn


def export_onnx(graph, params, dst, opset=13):
    try:
        import paddle2onnx
    except ImportError:
        raise RuntimeError("ONNX export needs paddle2onnx (pip install paddle2onnx onnxruntime)") from None
    paddle2onnx.export(graph, params, dst, opset_version=opset, enable_onnx_checker=True)
    return os.path.basename(dst)


def export_main(method, argv=None):
    p = add_model_flags(argparse.ArgumentParser(description=f"{method.name}: export for Paddle Inference / ONNX"))
    p.add_argument("-output", type=str, required=True, help="folder for model.json, model.pdiparams, inference.json")
    p.add_argument("-onnx", action="store_true", help="also write model.onnx (needs paddle2onnx)")
    p.add_argument("-opset", type=int, default=13)
    args = p.parse_args(argv)
    return run_entry(_export, method, args)


def _export(method, args):
    check_writable(args.output)
    if args.onnx:
        try:
            import paddle2onnx  # noqa: F401 - checked before the work, not after it
        except ImportError:
            raise ConfigError("-onnx needs paddle2onnx (pip install paddle2onnx onnxruntime)") from None
    config, model = load_model(method, args)
    meta = export_model(method, config, model, args.output, class_names_for(config, args.data_path),
                        onnx=args.onnx, opset=args.opset)
    print(f"exported {config.MODEL.NAME} to {args.output}: " + ", ".join(meta["files"].values()) + f", {META_FILE}")
    return meta
