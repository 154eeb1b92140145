"""Run an exported model (common/export.py) with Paddle Inference or ONNX Runtime, preprocessing included.

    python -m common.deploy EXPORT_DIR IMAGES [-backend paddle|onnx] [-topk K] [-csv F] [-batch_size N]
                            [-lat LAT -lon LON -date YYYY-MM-DD] [-data_path ROOT] [-threads N] [-device cpu|gpu:N]

IMAGES is an image file, a folder (searched recursively; sub-folders named like the classes label their images) or
a list file (`path label [extra columns]`, paths relative to the list's folder or to -data_path). Prints the top-k
classes with the names inference.json carries, the top-1 accuracy when the images are labelled, and writes the
predictions to a CSV with -csv (the folder is checked writable before the work; the file is written atomically).
A model with extra inputs (Dynamic MLP's metadata) takes them from the list's extra columns, or from -lat / -lon /
-date for an image or a folder, as inference.json's `source` of that input says. Nothing of the training code is
imported (no common.engine, no method folder).

    clf = ExportedClassifier("export_dir")                 # or backend="onnx"
    probs = clf.predict_images([PIL images])               # softmax over classes, [N, C]
    logits = clf.run(batch_nchw, *extra_inputs)
"""
import argparse
import contextlib
import csv
import json
import os
import sys

import numpy as np

from common.data.datasets import IMG_EXTENSIONS, DataError, Sample, load_rgb, read_list_file
from common.data.transforms import CenterCrop, Compose, ResizeShortSide, SquareResize, ToNormalizedArray
from common.errors import NonFiniteError, SuiteError, run_entry

META_FILE = "inference.json"
ONNX_INSTALL = "pip install -r requirements-onnx.txt (paddle2onnx and onnxruntime), or pip install onnxruntime"


class DeployError(SuiteError):
    """The export folder, a flag or the back-end cannot serve the request (exit 2)."""


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


def run_predictor(predictor, arrays):
    """Feed `arrays` (numpy, contiguous) to the predictor's inputs in order, run it; every output as numpy."""
    for name, arr in zip(predictor.get_input_names(), arrays):
        handle = predictor.get_input_handle(name)
        handle.reshape(arr.shape)
        handle.copy_from_cpu(arr)
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


def read_export_meta(export_dir):
    """inference.json of an export folder, or a DeployError saying what the folder is not."""
    path = os.path.join(export_dir, META_FILE)
    if not os.path.isdir(export_dir):
        raise DeployError(f"export folder not found: {export_dir}")
    if not os.path.isfile(path):
        raise DeployError(f"{export_dir} is not an export folder (no {META_FILE}); write one with "
                          f"python <method>/export.py -pretrained ... -output {export_dir}")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:
        raise DeployError(f"{path} is not valid JSON ({e}); export the model again") from None
    missing = [k for k in ("files", "inputs", "class_names", "image_size", "resize_size", "interpolation", "mean",
                           "std") if k not in meta]
    if missing:
        raise DeployError(f"{path} lacks {', '.join(missing)}; export the model again")
    return meta


class ExportedClassifier:
    def __init__(self, export_dir, backend="paddle", threads=None, gpu_id=None):
        self.meta = read_export_meta(export_dir)
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
                raise DeployError(f"{export_dir} has no ONNX model: export it with -onnx, or use -backend paddle")
            try:
                import onnxruntime as ort
            except ImportError:
                raise DeployError(f"the onnx back-end needs ONNX Runtime, which is not installed: {ONNX_INSTALL}"
                                  ) from None
            if gpu_id is not None:
                raise DeployError("the onnx back-end runs on the CPU here; use -backend paddle for a GPU")
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self._session = ort.InferenceSession(os.path.join(export_dir, files["onnx"]), opts,
                                                 providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self._session.get_inputs()]
        else:
            raise DeployError(f"unknown backend '{backend}' (paddle or onnx)")

    def run(self, images, *extras):
        arrays = [np.ascontiguousarray(images, dtype="float32")] + [np.ascontiguousarray(e) for e in extras]
        if len(arrays) != len(self.input_names):
            raise ValueError(f"the exported model takes {len(self.input_names)} inputs ({', '.join(self.input_names)})"
                             f", got {len(arrays)}")
        if self.backend == "onnx":
            return self._session.run(None, dict(zip(self.input_names, arrays)))[0]
        return run_predictor(self._predictor, arrays)[0]

    def preprocess(self, pil_images):
        return np.stack([self.transform(img.convert("RGB")) for img in pil_images])

    def predict_images(self, pil_images, *extras):
        logits = self.run(self.preprocess(pil_images), *extras).astype("float64")
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------- images to predict
# (also predict.py's: common.inference imports these)
def folder_samples(root, names, extra=()):
    """Images under `root` (recursive, sorted); those inside a top-level sub-folder named like a class (a class-folder
    tree such as <data>/val/<class>/...) get its label, the others -1."""
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        top = rel.split(os.sep)[0] if rel != "." else ""
        for f in sorted(files):
            if f.lower().endswith(IMG_EXTENSIONS):
                samples.append(Sample(os.path.join(dirpath, f), index.get(top, -1), extra, root))
    if not samples:
        raise DataError(f"no images found under {root}")
    return samples


def collect_samples(target, data_path=None, extra=(), names=None, num_classes=None):
    """Samples for an image file, a folder or a list file. With the class `names`, images of a folder that sit in
    a sub-folder named like a class get its label."""
    if os.path.isdir(target) and names:
        return folder_samples(target, names, extra)
    if os.path.isdir(target):
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(target) for f in files
                       if f.lower().endswith(IMG_EXTENSIONS))
        if not paths:
            raise DataError(f"no images found under {target}")
        return [Sample(p, -1, extra, target) for p in paths]
    if not os.path.exists(target):
        raise DataError(f"not found: {target}")
    if target.lower().endswith(IMG_EXTENSIONS):
        return [Sample(target, -1, extra, target)]
    root = data_path or os.path.dirname(os.path.abspath(target))
    return read_list_file(target, root, num_classes)


def is_list_file(target):
    return os.path.isfile(target) and not target.lower().endswith(IMG_EXTENSIONS)


def write_csv(path, results, names):
    """path, label (empty when unknown), prediction, its name and probability, then `name:probability` of the
    other top-k classes."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        k = len(results[0][1]) if results else 0
        w.writerow(["path", "label", "prediction", "prediction_name", "probability"] +
                   [f"top{i + 1}" for i in range(1, k)])
        for sample, ids, probs in results:
            w.writerow([sample.path, sample.label if sample.label >= 0 else "", int(ids[0]), names[int(ids[0])],
                        f"{probs[0]:.6f}"] + [f"{names[int(c)]}:{p:.4f}" for c, p in zip(ids[1:], probs[1:])])


# ------------------------------------------------------------------------------------------- extra inputs
def input_builders(meta, export_dir):
    """For every input after the image: sample -> array, from the `source` inference.json gives it. An input without
    a source this module knows is refused, naming it."""
    from common import metadata
    builders = []
    for spec in meta["inputs"][1:]:
        source = spec.get("source") or {}
        if source.get("encoding") == metadata.ENCODING:
            encoder = metadata.MetadataEncoder(source.get("subset", "geo_temporal"))
            builders.append((spec["name"], encoder))
            continue
        raise DeployError(
            f"{os.path.join(export_dir, META_FILE)}: the model takes the input '{spec['name']}' "
            f"{spec.get('shape')} besides the image, and the file does not say how to build it"
            + (f" (unknown source {source})" if source else " (exported before common.deploy could read it: "
               "export the model again)")
            + "; from Python, pass the array to ExportedClassifier.run")
    return builders


METADATA_FLAGS = ("lat", "lon", "date")


def metadata_columns(args, builders, target):
    """The metadata columns for an image or a folder from -lat / -lon / -date, checked; () when the model takes
    none. A list file carries them in its own columns."""
    given = [f"-{k}" for k in METADATA_FLAGS if getattr(args, k) is not None]
    if given and not builders:
        raise DeployError(f"{' '.join(given)}: this model takes no metadata (its only input is the image)")
    if not builders:
        return ()
    if is_list_file(target):
        if given:
            raise DeployError(f"{' '.join(given)}: {target} is a list file, which carries the metadata in its "
                              f"columns (path label lat lon YYYY-MM-DD)")
        return ()
    from common.metadata import parse_columns
    columns = tuple("nan" if getattr(args, k) is None else getattr(args, k) for k in METADATA_FLAGS)
    try:
        parse_columns(columns)
    except ValueError as e:
        raise DeployError(f"-lat / -lon / -date: {e}") from None
    if len(given) < len(METADATA_FLAGS):
        print("note: the model takes latitude, longitude and date; without all of -lat, -lon and -date the "
              "metadata is 'unknown' (zeros)", file=sys.stderr)
    return columns


# ------------------------------------------------------------------------------------------------- the CLI
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m common.deploy",
        description="Predict classes with an exported model (the folder <method>/export.py writes), without the "
                    "training code.")
    p.add_argument("export_dir", help="folder with inference.json, model.json / model.pdiparams (and model.onnx)")
    p.add_argument("images", help="image file, folder (recursive) or list file (path label [lat lon date])")
    p.add_argument("-backend", choices=("paddle", "onnx"), default="paddle",
                   help="Paddle Inference (default) or ONNX Runtime (needs model.onnx and onnxruntime)")
    p.add_argument("-topk", type=int, default=5, help="classes shown per image (capped at the class count)")
    p.add_argument("-csv", type=str, default=None, help="write the predictions to this CSV file")
    p.add_argument("-batch_size", type=int, default=32)
    p.add_argument("-data_path", type=str, default=None,
                   help="root of a list file's paths (default: the list file's folder)")
    p.add_argument("-lat", type=str, default=None, help="latitude of the image(s), for a model taking metadata")
    p.add_argument("-lon", type=str, default=None, help="longitude of the image(s)")
    p.add_argument("-date", type=str, default=None, help="date of the image(s), YYYY-MM-DD")
    p.add_argument("-threads", type=int, default=None, help="CPU math threads (default: every core)")
    p.add_argument("-device", type=str, default="cpu", help="cpu, gpu or gpu:N (the paddle back-end)")
    return p


def parse_device(device):
    if device == "cpu":
        return None
    if device == "gpu":
        return 0
    if device.startswith("gpu:") and device[4:].isdigit():
        return int(device[4:])
    raise DeployError(f"-device {device}: use cpu, gpu or gpu:N")


def check_args(args):
    for flag in ("topk", "batch_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise DeployError(f"-{flag} {value}: must be at least 1")


def predict(clf, samples, builders, batch_size=32, topk=5, progress=True):
    """[(sample, top-k class ids, top-k probabilities)]; images are decoded as the training side decodes them."""
    from common.report import Progress
    k = min(topk, len(clf.class_names))
    report = (Progress("predict", len(samples), lambda line: print(line, file=sys.stderr, flush=True), every=10)
              if progress and len(samples) > batch_size else None)
    results = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        images = clf.preprocess([load_rgb(s.path, s.origin) for s in batch])
        extras = [np.stack([build(s) for s in batch]).astype("float32") for _, build in builders]
        logits = clf.run(images, *extras).astype("float64")
        bad = ~np.isfinite(logits).all(axis=1)
        if bad.any():
            raise NonFiniteError(f"the model gave non-finite logits for {batch[int(np.argmax(bad))].path}")
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for i, s in enumerate(batch):
            results.append((s, ids[i], probs[i, ids[i]]))
        if report is not None:
            report.step(len(batch))
    if report is not None:
        report.end(len(results))
    return results


@contextlib.contextmanager
def native_stdout_to_stderr():
    """File descriptor 1 goes to stderr meanwhile, so that stdout holds only the predictions."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:   # no stdout at all
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _deploy(args):
    from common.outdir import check_output_file
    check_args(args)
    gpu_id = parse_device(args.device)
    if args.csv:
        check_output_file(args.csv, "-csv")
    meta = read_export_meta(args.export_dir)
    names = meta["class_names"]
    builders = input_builders(meta, args.export_dir)
    columns = metadata_columns(args, builders, args.images)
    samples = collect_samples(args.images, args.data_path, columns, names, len(names))
    for name, build in builders:   # every metadata row parsed before the first prediction, a bad one named
        for s in samples:
            build(s)
    with native_stdout_to_stderr():   # Paddle Inference's C++ prints debugging lines (ReduceMeanCheckIfOneDNNSupport)
        clf = ExportedClassifier(args.export_dir, backend=args.backend, threads=args.threads, gpu_id=gpu_id)
        results = predict(clf, samples, builders, args.batch_size, args.topk)
    print_predictions(results, names, args.csv)
    return results


def print_predictions(results, names, csv_path=None):
    """Top-k per image, top-1 over the labelled ones, and the CSV (written atomically) when asked for; shared by
    this CLI and `<method>/predict.py`."""
    for sample, ids, probs in results:
        print(f"{sample.path}: " + ", ".join(f"{names[int(c)]} {p:.3f}" for c, p in zip(ids, probs)))
    labelled = [(s, ids) for s, ids, _ in results if s.label >= 0]
    if labelled:
        correct = sum(int(ids[0]) == s.label for s, ids in labelled)
        print(f"top-1 on {len(labelled)} labelled images: {100.0 * correct / len(labelled):.2f}% ({correct})")
    if csv_path:
        from common.outdir import atomic_write
        atomic_write(csv_path, lambda tmp: write_csv(tmp, results, names))
        print(f"wrote {csv_path}")


def main(argv=None):
    return run_entry(_deploy, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
