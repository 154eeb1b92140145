"""A run describes itself, and habits users bring from PaddleViT / PaddleClas / timm work, through the real command
lines: checkpoints carry the method, model, classes and config, so -cfg can be left out wherever a checkpoint is
given; the launcher reads the method from a config.yaml or a checkpoint; class-folder runs name their classes;
evaluation never writes into a training run's own files; -dataset imagenet2012, -pretrained without extension,
-ngpus, -o KEY=VALUE; PaddleViT .pdparams port; a head mismatch says how to fix it; EMA weights on request."""
import os
import shutil
import sys

import numpy as np
import paddle
import pytest

from tests.helpers import REPO, TINY_RESMLP, read_json, resmlp_main, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")
PREDICT = [sys.executable, os.path.join(REPO, "resmlp", "predict.py")]
EXPORT = [sys.executable, os.path.join(REPO, "resmlp", "export.py")]


def one_error(proc, code, *needles):
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-3000:])


@pytest.fixture(scope="module")
def folder_data(small_demo, tmp_path_factory):
    """The small demo as class-per-folder trees, the folders named unlike the demo's classes.txt (n<label>_<name>,
    sorted in label order) and no classes.txt: the only source of the names is the folders."""
    root = tmp_path_factory.mktemp("folders")
    with open(os.path.join(small_demo, "classes.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    folders = [f"n{i}_{name}" for i, name in enumerate(names)]
    for split in ("train", "val"):
        with open(os.path.join(small_demo, f"{split}_list.txt")) as f:
            for line in f:
                if not line.strip():
                    continue
                rel, label = line.split()[:2]
                dest = root / split / folders[int(label)]
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(os.path.join(small_demo, rel), dest / os.path.basename(rel))
    return str(root), folders


@pytest.fixture(scope="module")
def run_dir(folder_data, tmp_path_factory):
    """One epoch of a tiny ResMLP on the class folders, with EMA."""
    data, _ = folder_data
    out = str(tmp_path_factory.mktemp("run") / "run")
    run_cli(resmlp_main("-cfg", DEMO_CFG, "-dataset", "folder", "-data_path", data, "-output", out,
                        "-batch_size", "16", "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0",
                        "EMA.ENABLE", "True", "EMA.DECAY", "0.5"))
    return out


# ------------------------------------------------------------------------------------------ the run describes itself
def test_checkpoint_carries_method_model_classes_and_config(run_dir, folder_data):
    from common.checkpoint import read_checkpoint
    _, folders = folder_data
    ck = read_checkpoint(os.path.join(run_dir, "last.pdparams"))
    assert ck["meta"] == {"method": "resmlp", "model_name": "resmlp_12_224", "num_classes": 8,
                          "class_names": folders}
    assert "METHOD: resmlp" in ck["config"] and "DATASET: folder" in ck["config"]
    with open(os.path.join(run_dir, "classes.txt")) as f:      # the class folders, in label order
        assert f.read().split("\n")[:-1] == folders
    with open(os.path.join(run_dir, "config.yaml")) as f:
        assert "METHOD: resmlp" in f.read()


def test_predict_without_cfg_takes_the_stored_config_and_shows_class_names(run_dir, folder_data):
    """No -cfg, no -data_path (so no classes.txt): the model is the checkpoint's tiny one (not the default
    resmlp_24 that gave a 240-key mismatch), and the names are the folder names from the checkpoint's meta. The
    checkpoint is named without its extension, as PaddleViT users do."""
    data, folders = folder_data
    image_dir = os.path.join(data, "val", folders[3])
    proc = run_cli(PREDICT + ["-pretrained", os.path.join(run_dir, "last"), "-image", image_dir, "-topk", "2"])
    lines = [line for line in proc.stdout.splitlines() if line.startswith(image_dir)]
    assert len(lines) == len(os.listdir(image_dir))
    assert all(line.split(": ", 1)[1].split()[0] in folders for line in lines), lines[:3]
    assert "config: the one stored in" in proc.stderr


def test_explicit_cfg_wins_with_a_short_note_of_the_differences(run_dir, small_demo):
    proc = run_cli(PREDICT + ["-cfg", DEMO_CFG, "-pretrained", os.path.join(run_dir, "last.pdparams"),
                              "-image", os.path.join(small_demo, "val_list.txt"), "-data_path", small_demo,
                              "-opts", *TINY_RESMLP])
    note = [line for line in proc.stderr.splitlines() if "differs from the config stored in" in line]
    assert len(note) == 1, proc.stderr[-2000:]
    # the training run differed in DATA.DATASET (folder), TRAIN.EPOCHS, TRAIN.WARMUP_EPOCHS, EMA.* ... and the
    # note names a few of them, MODEL / DATA keys first, not all 240 keys
    assert "DATA.DATASET 'list' (checkpoint 'folder')" in note[0]
    assert note[0].count("(checkpoint ") <= 6
    assert "MODEL.NAME" not in note[0] and "SAVE.OUTPUT" not in note[0]
    assert "top-1 on 64 labelled images" in proc.stdout      # classes.txt under -data_path: the list's labels


def test_plain_weights_still_need_cfg(run_dir, tmp_path):
    from common.checkpoint import read_checkpoint
    plain = str(tmp_path / "plain.pdparams")
    paddle.save(read_checkpoint(os.path.join(run_dir, "last.pdparams"))["model"], plain)
    proc = run_cli(PREDICT + ["-pretrained", plain, "-image", str(tmp_path)], check=False)
    one_error(proc, 2, "holds weights only", "-cfg")
    proc = run_cli(resmlp_main("-eval", "-pretrained", plain, "-output", str(tmp_path / "e")), check=False)
    one_error(proc, 2, "holds weights only", "-cfg")


def test_another_methods_script_is_refused_by_name(run_dir, tmp_path):
    proc = run_cli([sys.executable, os.path.join(REPO, "pim", "predict.py"), "-pretrained",
                    os.path.join(run_dir, "last.pdparams"), "-image", str(tmp_path)], check=False)
    one_error(proc, 2, "holds a resmlp model", "resmlp/predict.py")


def test_export_without_cfg_describes_the_model(run_dir, folder_data, tmp_path):
    _, folders = folder_data
    out = str(tmp_path / "export")
    run_cli(EXPORT + ["-pretrained", os.path.join(run_dir, "best.pdparams"), "-output", out])
    meta = read_json(os.path.join(out, "inference.json"))
    assert (meta["method"], meta["model_name"], meta["num_classes"]) == ("resmlp", "resmlp_12_224", 8)
    assert meta["class_names"] == folders
    assert "METHOD: resmlp" in meta["config"] and "EMBED_DIM: 32" in meta["config"]


def test_launcher_evaluates_a_checkpoint_alone_into_the_runs_eval_folder(run_dir, folder_data):
    """`sh run_eval_multi.sh -pretrained run/best.pdparams -data_path DIR` with -ngpus 2 (two CPU processes): the
    method and config come from the checkpoint; everything the evaluation writes (its log, config_eval.yaml,
    eval_metrics.json, the launcher's logs) goes into run/eval/, and the training run's own files stay as they were;
    the count and top-1 equal the training's last validation."""
    data, _ = folder_data
    own = {name: open(os.path.join(run_dir, name), "rb").read() for name in ("log.txt", "config.yaml")}
    proc = run_cli(["sh", "run_eval_multi.sh", "-pretrained", os.path.join(run_dir, "best.pdparams"), "-data_path",
                    data, "-ngpus", "2"])
    assert "resmlp/main_multi_gpu.py" in proc.stdout and "--nproc_per_node 2" in proc.stdout
    assert "-ngpus" not in proc.stdout.split("main_multi_gpu.py", 1)[1].splitlines()[0]   # not passed on
    for name, content in own.items():
        assert open(os.path.join(run_dir, name), "rb").read() == content, name
    assert not os.path.exists(os.path.join(run_dir, "eval_metrics.json"))
    ev = os.path.join(run_dir, "eval")
    for name in ("log.txt", "config_eval.yaml", "eval_metrics.json"):
        assert os.path.isfile(os.path.join(ev, name)), name
    assert os.path.isdir(os.path.join(ev, "launch_logs"))
    log = open(os.path.join(ev, "log.txt")).read()
    assert f"evaluation output in {ev}" in log and "2 process(es)" in log
    metrics = read_json(os.path.join(ev, "eval_metrics.json"))
    last = read_json(os.path.join(run_dir, "metrics.json"))["history"][-1]
    assert metrics["count"] == last["val_count"] == 64
    assert metrics["top1"] == pytest.approx(last["val_top1"])


def test_launcher_takes_the_method_from_a_runs_config_yaml_and_evaluates_ema(run_dir, folder_data, tmp_path):
    """The run's config.yaml lies in no configs/<method>/ folder: the launcher reads MODEL.METHOD from it. A fresh
    -output is written as given. -use_ema evaluates the EMA weights, and equals the EMA score of training."""
    from common import launch
    cfg = os.path.join(run_dir, "config.yaml")
    assert launch.method_for(["-cfg", cfg]).name == "resmlp"
    data, _ = folder_data
    out = str(tmp_path / "fresh")
    run_cli(["sh", "run_eval_multi.sh", "-cfg", cfg, "-pretrained", os.path.join(run_dir, "last.pdparams"),
             "-data_path", data, "-output", out, "-use_ema"])
    log = open(os.path.join(out, "log.txt")).read()
    assert "loaded pretrained EMA weights" in log and "evaluation output in" not in log
    metrics = read_json(os.path.join(out, "eval_metrics.json"))
    last = read_json(os.path.join(run_dir, "metrics.json"))["history"][-1]
    assert metrics["top1"] == pytest.approx(last["val_ema_top1"]) and metrics["loss"] == pytest.approx(
        last["val_ema_loss"], rel=1e-5)


def test_ema_weights_for_prediction_and_a_clear_error_without_them(run_dir, tmp_path):
    import argparse

    from common.checkpoint import read_checkpoint
    from common.inference import load_model
    from resmlp.method import ResMLPMethod
    ckpt = os.path.join(run_dir, "last.pdparams")
    stored = read_checkpoint(ckpt)
    for use_ema, opts, source in ((True, [], "ema"), (False, ["EVAL.USE_EMA", "True"], "ema"), (False, [], "model")):
        _, model = load_model(ResMLPMethod(), argparse.Namespace(cfg=None, pretrained=ckpt, opts=opts,
                                                                 data_path=None, use_ema=use_ema))
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), stored[source][k], err_msg=f"{source} {k}")
    no_ema = dict(stored, ema=None)
    path = str(tmp_path / "no_ema.pdparams")
    paddle.save(no_ema, path)
    proc = run_cli(PREDICT + ["-pretrained", path, "-image", str(tmp_path), "-use_ema"], check=False)
    one_error(proc, 2, "holds no EMA weights")


def test_resume_without_cfg_continues_in_the_checkpoints_folder(run_dir, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    proc = run_cli(resmlp_main("-resume", os.path.join(copy, "last.pdparams"), "-opts", "TRAIN.EPOCHS", "2"))
    assert "resumed from" in proc.stdout
    history = read_json(os.path.join(copy, "metrics.json"))["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert read_json(os.path.join(run_dir, "metrics.json"))["history"][-1]["epoch"] == 1   # the original untouched


# ------------------------------------------------------------------------------------------- habits users bring
def test_paddlevit_and_paddleclas_flags(run_dir, small_demo, tmp_path):
    """-dataset imagenet2012 is the list layout; -opts KEY=VALUE and -o KEY=VALUE mix with -opts KEY VALUE; the
    checkpoint is named without extension; -ngpus 1 fits a direct run."""
    out = str(tmp_path / "ev")
    pairs = [f"{k}={v}" for k, v in zip(TINY_RESMLP[::2], TINY_RESMLP[1::2])]
    run_cli(resmlp_main("-cfg", DEMO_CFG, "-dataset", "imagenet2012", "-data_path", small_demo, "-output", out,
                        "-eval", "-pretrained", os.path.join(run_dir, "last"), "-ngpus", "1",
                        "-opts", *pairs[:4], *TINY_RESMLP[8:], "-o", "DATA.BATCH_SIZE_EVAL=7", "-o", "SEED=3"))
    cfg = open(os.path.join(out, "config_eval.yaml")).read()
    assert "DATASET: list" in cfg and "BATCH_SIZE_EVAL: 7" in cfg and "SEED: 3" in cfg
    assert f"PRETRAINED: {os.path.join(run_dir, 'last.pdparams')}" in cfg
    assert read_json(os.path.join(out, "eval_metrics.json"))["count"] == 64
    proc = run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", str(tmp_path / "x"), "-eval",
                               "-o", "TRAIN.EPOCHS"), check=False)
    one_error(proc, 2, "-o takes KEY=VALUE")


def test_ngpus_on_a_direct_run_says_how_to_get_processes(small_demo, tmp_path):
    proc = run_cli(resmlp_main("-cfg", DEMO_CFG, "-data_path", small_demo, "-output", str(tmp_path / "o"),
                               "-ngpus", "2", "-opts", *TINY_RESMLP), check=False)
    one_error(proc, 2, "-ngpus 2", "run_train_multi.sh")


def test_paddlevit_pdparams_ports(tmp_path):
    """paddle.save(model.state_dict(), path), as PaddleViT writes weights: Paddle stores its name table
    ('StructuredToParameterName@@') beside the tensors; the port takes the tensors and leaves the table."""
    from common.safe_pickle import load_paddle_file
    from resmlp.resmlp import create_resmlp
    paddle.seed(0)
    model = create_resmlp("resmlp_12_224", num_classes=10)
    src, dst = str(tmp_path / "resmlp_12.pdparams"), str(tmp_path / "ported.pdparams")
    paddle.save(model.state_dict(), src)
    assert "StructuredToParameterName@@" in load_paddle_file(src)      # the layout this test is about
    proc = run_cli([sys.executable, "-m", "common.port", "--model", "resmlp_12_224", "--src", src, "--dst", dst,
                    "--num-classes", "10"], check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ported = load_paddle_file(dst)
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(ported) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(ported[k], v, err_msg=k)


def test_head_mismatch_names_the_new_head_option(run_dir, tmp_path):
    ckpt = os.path.join(run_dir, "last.pdparams")
    proc = run_cli(resmlp_main("-eval", "-pretrained", ckpt, "-output", str(tmp_path / "a"), "-opts",
                               "MODEL.NUM_CLASSES", "5"), check=False)
    one_error(proc, 2, "head.weight checkpoint (32, 8) vs model (32, 5)", "-opts MODEL.PRETRAINED_NEW_HEAD True",
              "(8 classes)")
    proc = run_cli(resmlp_main("-eval", "-pretrained", ckpt, "-output", str(tmp_path / "b"), "-opts",
                               "MODEL.MIXER.DEPTH", "3"), check=False)
    one_error(proc, 2, "missing keys")
    assert "PRETRAINED_NEW_HEAD" not in proc.stderr      # not the classifier: no such advice


def test_pim_tools_without_cfg(small_demo, tmp_path):
    """pim/infer.py and pim/heatmap.py take a PIM checkpoint of this suite without -cfg (and without -data_path:
    the names come from the checkpoint)."""
    from common.checkpoint import checkpoint_meta
    from common.cli import build_parser, config_from_args
    from pim.method import PIMMethod
    tiny = ["MODEL.PIM.EFFICIENTNET.WIDTH_MULT", "0.25", "MODEL.PIM.EFFICIENTNET.DEPTH_MULT", "0.3",
            "MODEL.PIM.FPN_SIZE", "16", "DATA.NUM_WORKERS", "0"]
    method = PIMMethod()
    config = config_from_args(build_parser().parse_args(["-cfg", os.path.join(REPO, "configs", "pim", "demo.yaml"),
                                                         "-opts", *tiny]), method.get_config())
    model = method.build_model(config)
    names = [f"bird_{i}" for i in range(config.MODEL.NUM_CLASSES)]
    ckpt = str(tmp_path / "pim.pdparams")
    paddle.save({"model": {k: v.numpy() for k, v in model.state_dict().items()}, "config": config.dump(),
                 "meta": checkpoint_meta("pim", config, names)}, ckpt)
    out = str(tmp_path / "infer")
    run_cli([sys.executable, os.path.join(REPO, "pim", "infer.py"), "-pretrained", ckpt, "-image",
             os.path.join(small_demo, "val_list.txt"), "-output", out])
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = f.read().splitlines()[1:]
    assert len(rows) == 64 and all(r.rsplit(",", 1)[1] in names for r in rows)   # prediction_name: the meta's
    with open(os.path.join(small_demo, "val_list.txt")) as f:
        image = os.path.join(small_demo, f.readline().split()[0])
    proc = run_cli([sys.executable, os.path.join(REPO, "pim", "heatmap.py"), "-pretrained", ckpt, "-image", image,
                    "-target_class", "bird_2", "-output", str(tmp_path / "heat.png")])
    assert "map of class bird_2" in proc.stdout and os.path.isfile(tmp_path / "heat.png")


def test_class_names_the_checkpoint_carries_beat_a_classes_txt_under_its_stored_data_path(tmp_path):
    """A checkpoint's own names describe its head; a classes.txt under the config's DATA.DATA_PATH (often a relative
    path stored with the checkpoint, pointing at whatever that folder holds here) comes after them, and a classes.txt
    under an explicit -data_path comes first."""
    from common.checkpoint import checkpoint_meta
    from common.inference import class_names_for
    from resmlp.method import ResMLPMethod
    config = ResMLPMethod().get_config()
    config.defrost()
    config.MODEL.NUM_CLASSES = 3
    stray, given = tmp_path / "stray", tmp_path / "given"
    for folder, names in ((stray, "a\nb\nc\n"), (given, "p\nq\nr\n")):
        folder.mkdir()
        (folder / "classes.txt").write_text(names)
    ckpt = str(tmp_path / "model.pdparams")
    paddle.save({"model": {}, "meta": checkpoint_meta("resmlp", config, ["x", "y", "z"])}, ckpt)
    config.DATA.DATA_PATH, config.MODEL.PRETRAINED = str(stray), ckpt
    assert class_names_for(config, None) == ["x", "y", "z"]
    assert class_names_for(config, str(given)) == ["p", "q", "r"]
    config.MODEL.PRETRAINED = ""
    assert class_names_for(config, None) == ["a", "b", "c"]
