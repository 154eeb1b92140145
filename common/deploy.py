"""Run an exported model (common/export.py) with Paddle Inference or ONNX Runtime, preprocessing included.

    clf = ExportedClassifier("export_dir")                 # or backend="onnx"
    probs = clf.predict_images([PIL images])               # softmax over classes, [N, C]
    logits = clf.run(batch_nchw, *extra_inputs)
"""
import json
import os

import numpy as np

from common.data.transforms import CenterCrop, Compose, ResizeShortSide, SquareResize, ToNormalizedArray

RESIZE_MODES = {"short_side": ResizeShortSide, "square": SquareResize}
# Ops whose oneDNN kernels Paddle Inference 3.3 cannot run from a PIR graph ("ConvertPirAttribute2RuntimeAttribute not
# support pir::ArrayAttribute<pir::DoubleAttribute>" for bilinear_interp): such graphs are run without the oneDNN
# placement pass (the plain CPU kernels; same results, 2-5x slower). The suite's own models avoid the op (PIM's FPN
# resizes with common.layers.resize_bilinear); this keeps any other exported graph running.
ONEDNN_UNSUPPORTED = ("bilinear_interp",)


def _uses_unsupported_onednn_ops(graph_path):
    if not graph_path.endswith(".json"):
        return False
    with open(graph_path) as f:
        text = f.read()
    return any(f'"1.{op}"' in text for op in ONEDNN_UNSUPPORTED)


def create_predictor(graph, params, threads=None, gpu_id=None, onednn=True):
    """A Paddle Inference predictor for a jit.save'd graph: CPU with `threads` math threads (default: all cores)
    and oneDNN where its kernels can run the graph, or GPU `gpu_id`."""
    from paddle import inference

    from common.dist import prefer_fast_mkl_on_amd
    cfg = inference.Config(graph, params)
    if gpu_id is None:
        prefer_fast_mkl_on_amd()
        cfg.disable_gpu()
    else:
        cfg.enable_use_gpu(256, gpu_id)
    if not onednn:
        cfg.disable_onednn()
    elif _uses_unsupported_onednn_ops(graph):
        cfg.delete_pass("onednn_placement_pass")
    cfg.disable_glog_info()
    cfg.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
    return inference.create_predictor(cfg)


class ExportedClassifier:
    def __init__(self, export_dir, backend="paddle", threads=None, gpu_id=None):
        with open(os.path.join(export_dir, "inference.json")) as f:
            self.meta = json.load(f)
        self.class_names = self.meta["class_names"]
        resize = RESIZE_MODES[self.meta.get("resize_mode", "short_side")]
        self.transform = Compose([
            resize(self.meta["resize_size"], self.meta["interpolation"]),
            CenterCrop(self.meta["image_size"]),
            ToNormalizedArray(self.meta["mean"], self.meta["std"]),
        ])
        files = self.meta["files"]
        self.backend = backend
        if backend == "paddle":
            self._predictor = create_predictor(os.path.join(export_dir, files["graph"]),
                                               os.path.join(export_dir, files["params"]), threads, gpu_id)
            self.input_names = self._predictor.get_input_names()
        elif backend == "onnx":
            if "onnx" not in files:
                raise FileNotFoundError(f"{export_dir} has no ONNX model; export with -onnx")
            import onnxruntime as ort
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self._session = ort.InferenceSession(os.path.join(export_dir, files["onnx"]), opts,
                                                 providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self._session.get_inputs()]
        else:
            raise ValueError(f"unknown backend '{backend}' (paddle or onnx)")

    def run(self, images, *extras):
        arrays = [np.ascontiguousarray(images, dtype="float32")] + [np.ascontiguousarray(e) for e in extras]
        if len(arrays) != len(self.input_names):
            raise ValueError(f"the exported model takes {len(self.input_names)} inputs ({', '.join(self.input_names)})"
                             f", got {len(arrays)}")
        if self.backend == "onnx":
            return self._session.run(None, dict(zip(self.input_names, arrays)))[0]
        for name, arr in zip(self.input_names, arrays):
            handle = self._predictor.get_input_handle(name)
            handle.reshape(arr.shape)
            handle.copy_from_cpu(arr)
        self._predictor.run()
        return self._predictor.get_output_handle(self._predictor.get_output_names()[0]).copy_to_cpu()

    def preprocess(self, pil_images):
        return np.stack([self.transform(img.convert("RGB")) for img in pil_images])

    def predict_images(self, pil_images, *extras):
        logits = self.run(self.preprocess(pil_images), *extras).astype("float64")
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
