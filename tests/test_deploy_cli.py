"""`python -m common.deploy` on exported models (ResMLP; Dynamic MLP with its metadata input), and `export.py`: no
package installed and no network used during `-onnx`, dependencies checked before anything is written, and the export
folder written whole or not at all."""
import csv
import json
import os
import re
import shutil
import sys

import numpy as np
import paddle
import pytest

from tests.helpers import REPO, TINY_RESMLP, read_json, run_cli

RESMLP_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")
DMLP_CFG = os.path.join(REPO, "configs", "dynamic_mlp", "demo.yaml")
DMLP_OPTS = ["VISUALDL", "False"]
TRAINING_MODULES = ("common.engine", "common.runner", "common.inference", "common.checkpoint", "common.cli",
                    "resmlp", "dynamic_mlp", "pim", "transfer", "torch")

# Runs a script (or -m module) with the network unreachable and no process allowed to start, recording each attempt
# (and the modules loaded) in a json file; modules named in the second argument cannot be imported. Paddle is
# imported before the guard: its own import runs `ldd --version`.
GUARD = r'''
import atexit, importlib.abc, json, os, runpy, socket, subprocess, sys

record_path, hidden, target = sys.argv[1], [m for m in sys.argv[2].split(",") if m], sys.argv[3:]
seen = {"processes": [], "connections": []}


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ImportError(f"No module named '{name}' (hidden by the test)")


def no_process(what):
    def refuse(*args, **kwargs):
        seen["processes"].append(f"{what}: {args[1] if what == 'Popen' else args[0]!r}"[:300])
        raise OSError("starting a process is refused by the test")
    return refuse


def no_network(self, address, *args):
    seen["connections"].append(repr(address))
    raise OSError(101, "Network is unreachable (test)")


def dump():
    seen["polygraphy_autoinstall"] = os.environ.get("POLYGRAPHY_AUTOINSTALL_DEPS")
    seen["modules"] = sorted(sys.modules)
    with open(record_path, "w") as f:
        json.dump(seen, f)


sys.meta_path.insert(0, Hide())
import paddle  # noqa: E402,F401
subprocess.Popen.__init__ = no_process("Popen")
subprocess.Popen.__del__ = lambda self: None
for name in ("system", "posix_spawn", "posix_spawnp", "execv", "execve"):
    setattr(os, name, no_process(name))
socket.socket.connect = no_network
socket.socket.connect_ex = no_network
atexit.register(dump)
if target[0] == "-m":
    sys.argv = [target[1]] + target[2:]
    runpy.run_module(target[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = target
    runpy.run_path(target[0], run_name="__main__")
'''
OFFLINE_ENV = {"PIP_NO_INDEX": "1", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def guarded(tmp, hidden, *target, check=True):
    """(process, record) of `target` run under GUARD."""
    guard = os.path.join(tmp, "guard.py")
    if not os.path.exists(guard):
        with open(guard, "w") as f:
            f.write(GUARD)
    record = os.path.join(tmp, "guard_record.json")
    if os.path.exists(record):
        os.remove(record)
    proc = run_cli([sys.executable, guard, record, ",".join(hidden), *target], check=check, **OFFLINE_ENV)
    return proc, read_json(record)


def deploy(*args, check=True, python_flags=()):
    return run_cli([sys.executable, *python_flags, "-m", "common.deploy", *args], check=check)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def seeded_weights(method, cfg, opts, path, randomise):
    """A model of the config with seeded weights, saved as a plain state dict. `randomise` (for ResMLP, whose head
    starts at zero): every weight drawn from N(0, 0.1), the Affine scales and layer scales from N(1, 0.1)."""
    from common.cli import build_parser, config_from_args
    config = config_from_args(build_parser().parse_args(["-cfg", cfg, "-opts", *opts]), method.get_config())
    paddle.seed(7)
    model = method.build_model(config)
    if randomise:
        rng = np.random.RandomState(7)
        for name, p in sorted(model.state_dict().items()):
            scale = name.endswith(("alpha", "ls1", "ls2"))
            p.set_value((scale + rng.standard_normal(p.shape) * 0.1).astype(p.numpy().dtype))
    paddle.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resmlp(small_demo, tmp_path_factory):
    """A tiny ResMLP exported with -onnx under GUARD, with onnx_graphsurgeon hidden (as on a machine where
    paddle2onnx's Polygraphy step would pip-install it): (checkpoint, export folder, export process, guard record)."""
    from resmlp.method import ResMLPMethod
    tmp = str(tmp_path_factory.mktemp("deploy_resmlp"))
    ckpt = seeded_weights(ResMLPMethod(), RESMLP_CFG, TINY_RESMLP, os.path.join(tmp, "tiny.pdparams"), True)
    out = os.path.join(tmp, "export")
    proc, record = guarded(tmp, ["onnx_graphsurgeon"], os.path.join(REPO, "resmlp", "export.py"),
                           "-cfg", RESMLP_CFG, "-pretrained", ckpt, "-data_path", small_demo, "-output", out, "-onnx",
                           "-opts", *TINY_RESMLP)
    return ckpt, out, proc, record


@pytest.fixture(scope="module")
def dmlp(small_demo, tmp_path_factory):
    """A seeded Dynamic MLP (image + location / date) of the demo config and its export (Paddle format)."""
    from dynamic_mlp.method import DynamicMLPMethod
    tmp = str(tmp_path_factory.mktemp("deploy_dmlp"))
    ckpt = seeded_weights(DynamicMLPMethod(), DMLP_CFG, DMLP_OPTS, os.path.join(tmp, "dmlp.pdparams"), False)
    out = os.path.join(tmp, "export")
    run_cli([sys.executable, os.path.join(REPO, "dynamic_mlp", "export.py"), "-cfg", DMLP_CFG, "-pretrained", ckpt,
             "-data_path", small_demo, "-output", out, "-opts", *DMLP_OPTS])
    return ckpt, out


def test_onnx_export_installs_nothing_and_needs_no_network(resmlp):
    """paddle2onnx's default Polygraphy step would pip-install onnx_graphsurgeon from NVIDIA's index (see the next
    test); the export must not start any process nor open any connection, and still write a working model.onnx."""
    _, out, proc, record = resmlp
    assert record["processes"] == [] and record["connections"] == [], record
    assert record["polygraphy_autoinstall"] is None and "polygraphy" not in record["modules"]
    assert sorted(os.listdir(out)) == ["inference.json", "model.json", "model.onnx", "model.pdiparams"]
    assert read_json(os.path.join(out, "inference.json"))["files"]["onnx"] == "model.onnx"
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".export")]   # no temporary sibling
    assert "exported resmlp_12_224" in proc.stdout


def test_the_guard_sees_paddle2onnx_default_pip_install(resmlp, tmp_path):
    """The guard of the previous test is not blind: paddle2onnx with its default optimize_tool does try to run pip
    (a machine with onnx_graphsurgeon installed would skip that; the guard hides it)."""
    import inspect

    import paddle2onnx
    if "optimize_tool" not in inspect.signature(paddle2onnx.export).parameters:
        pytest.skip("this paddle2onnx has no Polygraphy step")
    _, out, _, _ = resmlp
    script = tmp_path / "default_export.py"
    script.write_text("import sys, paddle2onnx\n"
                      "paddle2onnx.export(sys.argv[1] + '/model.json', sys.argv[1] + '/model.pdiparams', sys.argv[2], "
                      "opset_version=13)\n")
    _, record = guarded(str(tmp_path), ["onnx_graphsurgeon"], str(script), out, str(tmp_path / "x.onnx"))
    assert any("pip" in p and "onnx_graphsurgeon" in p for p in record["processes"]), record["processes"]


def test_export_checks_paddle2onnx_before_writing_anything(resmlp, tmp_path):
    ckpt, _, _, _ = resmlp
    out = str(tmp_path / "sub" / "export")
    proc, _ = guarded(str(tmp_path), ["paddle2onnx"], os.path.join(REPO, "resmlp", "export.py"), "-cfg", RESMLP_CFG,
                      "-pretrained", ckpt, "-output", out, "-onnx", "-opts", *TINY_RESMLP, check=False)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == ["error: -onnx needs paddle2onnx: pip install -r requirements-onnx.txt (paddle2onnx "
                                 "and onnxruntime)"]
    assert not os.path.exists(tmp_path / "sub")


def test_export_folder_is_written_whole_or_not_at_all(resmlp, tmp_path, monkeypatch):
    """A failure in the middle of the export (paddle2onnx dies after writing half a model.onnx) leaves no folder
    where there was none, and an earlier export intact; a complete export replaces the earlier one; a folder that
    holds anything else is refused before the work; a killed export's leftovers are cleaned up."""
    import common.export as export
    from common.cli import build_parser, config_from_args
    from common.errors import RunExistsError
    from resmlp.method import ResMLPMethod
    ckpt, earlier, _, _ = resmlp
    method = ResMLPMethod()
    config = config_from_args(build_parser().parse_args(["-cfg", RESMLP_CFG, "-opts", *TINY_RESMLP]),
                              method.get_config())
    model = method.build_model(config)

    def dies_midway(graph, params, dst, opset=13):
        with open(dst, "wb") as f:
            f.write(b"\x08\x07half a model")
        raise RuntimeError("injected failure")

    monkeypatch.setattr(export, "export_onnx", dies_midway)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="injected"):
        export.export_model(method, config, model, str(fresh), onnx=True)
    assert os.listdir(tmp_path) == []                      # neither the folder nor a temporary sibling

    kept = tmp_path / "kept"
    shutil.copytree(earlier, kept)
    before = {n: (kept / n).read_bytes() for n in os.listdir(kept)}
    with pytest.raises(RuntimeError, match="injected"):
        export.export_model(method, config, model, str(kept), onnx=True)
    assert {n: (kept / n).read_bytes() for n in os.listdir(kept)} == before
    assert sorted(os.listdir(tmp_path)) == ["kept"]

    monkeypatch.undo()
    export.export_model(method, config, model, str(kept), names=["n"] * 8)   # replaces it (without ONNX now)
    assert sorted(os.listdir(kept)) == ["inference.json", "model.json", "model.pdiparams"]
    assert read_json(kept / "inference.json")["class_names"] == ["n"] * 8
    assert sorted(os.listdir(tmp_path)) == ["kept"]

    run = tmp_path / "run"                                  # e.g. a training run's folder
    run.mkdir()
    (run / "last.pdparams").write_bytes(b"x")
    with pytest.raises(RunExistsError, match=r"holds files that are not an export \(last.pdparams\)"):
        export.check_export_target(str(run))
    assert os.listdir(run) == ["last.pdparams"]

    # an export killed (SIGKILL) while replacing `kept`: its temporary folder and the moved-aside earlier export
    dead = 2 ** 22 + 12345                                  # above the default pid_max: no such process
    (tmp_path / f".kept.tmp{dead}").mkdir()
    shutil.move(str(kept), str(tmp_path / f".kept.old{dead}"))
    export.remove_stale_siblings(str(tmp_path), "kept")
    assert sorted(os.listdir(tmp_path)) == ["kept", "run"]
    assert read_json(kept / "inference.json")["class_names"] == ["n"] * 8


def test_deploy_prints_top_k_and_writes_the_csv_like_predict(resmlp, small_demo, tmp_path):
    """Top-k with class names and the CSV equal predict.py's (the dygraph model) on the labelled val list, in Paddle
    Inference and ONNX Runtime; `python -m common.deploy` imports none of the training code."""
    ckpt, out, _, _ = resmlp
    val = os.path.join(small_demo, "val_list.txt")
    ref_csv = str(tmp_path / "predict.csv")
    run_cli([sys.executable, os.path.join(REPO, "resmlp", "predict.py"), "-cfg", RESMLP_CFG, "-pretrained", ckpt,
             "-data_path", small_demo, "-image", val, "-csv", ref_csv, "-topk", "3", "-opts", *TINY_RESMLP])
    ref = read_rows(ref_csv)
    names = open(os.path.join(small_demo, "classes.txt")).read().split()
    assert len(ref) == 64 and len({r["prediction"] for r in ref}) > 1     # the random weights do discriminate

    for backend in ("paddle", "onnx"):
        got_csv = str(tmp_path / f"{backend}.csv")
        proc = deploy(out, val, "-backend", backend, "-topk", "3", "-csv", got_csv, "-batch_size", "16",
                      python_flags=("-X", "importtime") if backend == "paddle" else ())
        rows = read_rows(got_csv)
        assert [r["path"] for r in rows] == [r["path"] for r in ref] and len(rows) == 64
        for r, e in zip(rows, ref):
            assert r["label"] == e["label"] and r["prediction_name"] == names[int(r["prediction"])]
            assert abs(float(r["probability"]) - float(e["probability"])) < 2e-5, (backend, r, e)
            if r["prediction"] != e["prediction"]:                          # only a near tie may flip
                assert abs(float(e["probability"]) - float(e["top2"].split(":")[1])) < 1e-4, (backend, r, e)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(small_demo)]
        assert len(lines) == 64
        first = lines[0].split(": ", 1)[1].split(", ")
        assert len(first) == 3 and first[0].split()[0] == rows[0]["prediction_name"]
        correct = sum(r["prediction"] == r["label"] for r in rows)
        assert f"top-1 on 64 labelled images: {100 * correct / 64:.2f}% ({correct})" in proc.stdout
        if backend == "paddle":
            imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S.*)$", proc.stderr, flags=re.M)
            imported = [m.strip() for m in imported]
            assert "common.data.datasets" in imported and "paddle.inference" in imported    # the list is read
            assert not [m for m in imported if m in TRAINING_MODULES or m.startswith(
                tuple(t + "." for t in TRAINING_MODULES))], imported

    image = os.path.join(small_demo, "images", "barred_fine", "0000.jpg")   # a single image, and a folder
    proc = deploy(out, image, "-topk", "20")
    assert proc.stdout.splitlines()[0].startswith(image + ": ")              # stdout holds only the predictions
    assert len(proc.stdout.splitlines()[0].split(": ", 1)[1].split(", ")) == 8   # capped at the class count
    folder = os.path.join(small_demo, "images", "spotted_fine")
    proc = deploy(out, folder, "-topk", "1")
    assert sum(line.startswith(folder) for line in proc.stdout.splitlines()) == 24
    assert "top-1 on" not in proc.stdout                  # a folder of images without class sub-folders


def test_deploy_errors_are_one_line(resmlp, small_demo, tmp_path):
    from common.deploy import DeployError, _deploy, build_parser
    from common.errors import OutputError
    _, out, _, _ = resmlp
    image = os.path.join(small_demo, "images", "barred_fine", "0000.jpg")

    # onnxruntime missing: one line saying how to install it
    proc, _ = guarded(str(tmp_path), ["onnxruntime"], "-m", "common.deploy", out, image, "-backend", "onnx",
                      check=False)
    assert proc.returncode == 2
    assert error_lines(proc) == ["error: the onnx back-end needs ONNX Runtime, which is not installed: pip install "
                                 "-r requirements-onnx.txt (paddle2onnx and onnxruntime), or pip install onnxruntime"]
    assert "Traceback" not in proc.stderr
    proc = deploy(str(tmp_path), image, check=False)
    assert proc.returncode == 2 and error_lines(proc) == [
        f"error: {tmp_path} is not an export folder (no inference.json); write one with python <method>/export.py "
        f"-pretrained ... -output {tmp_path}"]

    def run(*argv):
        return _deploy(build_parser().parse_args([out, image, *argv]))

    with pytest.raises(DeployError, match="-lat -date: this model takes no metadata"):
        run("-lat", "10", "-date", "2020-01-01")
    with pytest.raises(OutputError, match="is a folder"):    # -csv checked before the work
        run("-csv", str(tmp_path))
    with pytest.raises(DeployError, match="-topk 0: must be at least 1"):
        run("-topk", "0")
    with pytest.raises(DeployError, match="-device tpu"):
        run("-device", "tpu")
    no_onnx = tmp_path / "no_onnx"
    shutil.copytree(out, no_onnx, ignore=shutil.ignore_patterns("model.onnx"))
    meta = read_json(no_onnx / "inference.json")
    del meta["files"]["onnx"]
    (no_onnx / "inference.json").write_text(json.dumps(meta))
    with pytest.raises(DeployError, match="has no ONNX model: export it with -onnx"):
        _deploy(build_parser().parse_args([str(no_onnx), image, "-backend", "onnx"]))


def test_dynamic_mlp_metadata_from_list_columns_and_flags(dmlp, small_demo, tmp_path):
    """The metadata input is built from the list's lat / lon / date columns (predictions equal predict.py's), or from
    -lat / -lon / -date for one image (equal to the exported model fed common.metadata.encode); what cannot be
    served is refused, naming why."""
    from common.deploy import DeployError, ExportedClassifier, _deploy, build_parser
    from common.data.datasets import DataError, load_rgb
    from common.metadata import encode, parse_date
    ckpt, out = dmlp
    meta = read_json(os.path.join(out, "inference.json"))
    assert meta["inputs"][1] == {"name": "metadata", "shape": [-1, 6], "dtype": "float32",
                                 "source": {"encoding": "lat_lon_date", "subset": "geo_temporal",
                                            "columns": ["lat", "lon", "date"]}}
    val = os.path.join(small_demo, "val_list.txt")
    ref_csv, got_csv = str(tmp_path / "predict.csv"), str(tmp_path / "deploy.csv")
    run_cli([sys.executable, os.path.join(REPO, "dynamic_mlp", "predict.py"), "-cfg", DMLP_CFG, "-pretrained", ckpt,
             "-data_path", small_demo, "-image", val, "-csv", ref_csv, "-opts", *DMLP_OPTS])
    deploy(out, val, "-csv", got_csv)
    ref, rows = read_rows(ref_csv), read_rows(got_csv)
    assert len(rows) == len(ref) == 64
    for r, e in zip(rows, ref):
        assert abs(float(r["probability"]) - float(e["probability"])) < 2e-5, (r, e)
        assert r["prediction"] == e["prediction"] or \
            abs(float(e["probability"]) - float(e["top2"].split(":")[1])) < 1e-4, (r, e)

    image = os.path.join(small_demo, "images", "barred_fine", "0000.jpg")
    results = _deploy(build_parser().parse_args([out, image, "-lat", "48.1", "-lon", "11.6", "-date", "2021-05-03",
                                                 "-topk", "8"]))
    clf = ExportedClassifier(out)
    vec = encode(48.1, 11.6, parse_date("2021-05-03"))[None]
    expected = clf.predict_images([load_rgb(image)], vec)[0]
    unknown = clf.predict_images([load_rgb(image)], np.zeros_like(vec))[0]
    (_, ids, probs), = results
    np.testing.assert_allclose(probs, expected[ids], rtol=0, atol=1e-6)
    assert np.abs(expected - unknown).max() > 1e-4            # the metadata does reach the model

    def run(target, *argv, export=out):
        return _deploy(build_parser().parse_args([export, target, *argv]))

    with pytest.raises(DeployError, match="-lat / -lon / -date: latitude 'north' is not a number"):
        run(image, "-lat", "north", "-lon", "1", "-date", "2020-01-01")
    with pytest.raises(DeployError, match="is a list file, which carries the metadata in its columns"):
        run(val, "-lat", "10")
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text(f"{image} 0 10 20 2020-13-40\n")
    with pytest.raises(DataError, match=r"bad.txt:1: date '2020-13-40' is not a valid date"):
        run(str(bad_list))
    old = tmp_path / "old_export"                              # exported before inference.json named the source
    shutil.copytree(out, old)
    meta = read_json(old / "inference.json")
    del meta["inputs"][1]["source"]
    (old / "inference.json").write_text(json.dumps(meta))
    with pytest.raises(DeployError, match="takes the input 'metadata' .* does not say how to build it .*export the "
                                          "model again"):
        run(image, export=str(old))
