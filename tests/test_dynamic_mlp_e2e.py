"""Dynamic MLP end to end through the real scripts: on the demo data (whose latitude / longitude / date columns are
informative) Dynamic MLP-C beats the image-only model of the same backbone, both well above chance; evaluation of
the checkpoint reproduces the training run's count; the iNat21 json layout trains from inside the method folder;
bad data stops the CLI with a one-line error."""
import json
import os
import subprocess
import sys

from tests.helpers import REPO, env, read_json, run_cli

CFG = os.path.join(REPO, "configs", "dynamic_mlp")
CHANCE = 100.0 / 8


def test_demo_metadata_beats_image_only(demo_full, tmp_path):
    results = {}
    for name in ("demo", "demo_image_only"):
        out = str(tmp_path / name)
        proc = run_cli(["sh", "run_train_multi.sh", "-cfg", os.path.join(CFG, f"{name}.yaml"), "-data_path", demo_full,
                        "-output", out, "-opts", "VISUALDL", "False", "EVAL.FREQ", "100"],  # val after the last epoch
                       timeout=1200)
        assert "final (epoch" in proc.stdout
        results[name] = read_json(os.path.join(out, "metrics.json"))["history"][-1]
        assert results[name]["val_count"] == 200
    with_meta, image_only = results["demo"]["val_top1"], results["demo_image_only"]["val_top1"]
    print(f"\ndemo top-1: Dynamic MLP-C {with_meta:.1f}%, image-only {image_only:.1f}% (chance {CHANCE:.1f}%)")
    assert image_only > 2 * CHANCE, results
    assert with_meta > 6 * CHANCE and with_meta > image_only + 25, results
    assert "without complete metadata" in open(os.path.join(tmp_path, "demo", "log.txt")).read()

    ev = str(tmp_path / "eval")
    run_cli(["sh", "run_eval_multi.sh", "-cfg", os.path.join(CFG, "demo.yaml"), "-data_path", demo_full,
             "-output", ev, "-pretrained", os.path.join(tmp_path, "demo", "last.pdparams")])
    assert read_json(os.path.join(ev, "eval_metrics.json"))["correct"] == results["demo"]["val_correct"]


def _list_to_inat_json(root, list_name, json_name):
    """The demo list file as an iNat21-style json (annotations in reverse order, null for missing metadata)."""
    images, annotations = [], []
    with open(os.path.join(root, list_name)) as f:
        for i, line in enumerate(f):
            path, label, lat, lon, date = line.split()
            missing = "nan" in (lat, lon, date)
            images.append({"id": 7 * i + 3, "file_name": path, "latitude": None if missing else float(lat),
                           "longitude": None if missing else float(lon),
                           "date": None if missing else f"{date} 12:00:00+00:00"})
            annotations.append({"id": i, "image_id": 7 * i + 3, "category_id": int(label)})
    annotations.reverse()
    with open(os.path.join(root, json_name), "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)


def test_inat_json_layout_from_inside_the_folder(small_demo, tmp_path):
    root = tmp_path / "inat"
    root.mkdir()
    os.symlink(os.path.join(small_demo, "images"), root / "images")
    for list_name, json_name in (("train_list.txt", "train_mini.json"), ("val_list.txt", "val.json")):
        with open(os.path.join(small_demo, list_name)) as src, open(root / list_name, "w") as dst:
            dst.write(src.read())
        _list_to_inat_json(str(root), list_name, json_name)
    out = str(tmp_path / "out")
    tiny = ["DATA.DATASET", "inat21_json", "DATA.IMAGE_SIZE", "32", "DATA.NUM_WORKERS", "0", "TRAIN.EPOCHS", "1",
            "MODEL.DYNAMIC_MLP.D", "32", "MODEL.DYNAMIC_MLP.H", "8", "VISUALDL", "False",
            "AUG.MIXUP_ALPHA", "0.4", "AUG.MIXUP_PROB", "1.0"]  # the recipe's mixup, metadata mixed too
    proc = subprocess.run([sys.executable, "main_multi_gpu.py", "-cfg", os.path.join(CFG, "demo.yaml"), "-data_path",
                           str(root), "-output", out, "-opts", *tiny], cwd=os.path.join(REPO, "dynamic_mlp"),
                          env={k: v for k, v in env().items() if k != "PYTHONPATH"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "final (epoch 1)" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert read_json(os.path.join(out, "metrics.json"))["history"][-1]["val_count"] == 64

    # a malformed annotation file: one clear line, exit status 2
    with open(root / "val.json", "a") as f:
        f.write("}")
    proc = run_cli([sys.executable, os.path.join(REPO, "dynamic_mlp", "main_multi_gpu.py"), "-cfg",
                    os.path.join(CFG, "demo.yaml"), "-data_path", str(root), "-output", out, "-eval", "-opts", *tiny],
                   check=False)
    assert proc.returncode == 2 and "val.json: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli([sys.executable, os.path.join(REPO, "dynamic_mlp", "main_multi_gpu.py"), "-cfg",
                    os.path.join(CFG, "demo.yaml"), "-data_path", str(root), "-output", out, "-eval", "-opts", *tiny,
                    "MODEL.NAME", "resnet50_dynamic_mlp_x"], check=False)
    assert proc.returncode == 2 and "unknown Dynamic MLP model 'resnet50_dynamic_mlp_x'" in proc.stderr
