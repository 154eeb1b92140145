"""Each method's fine-tuning command runs with nothing but a data path: the config names its ImageNet
initialisation, which is downloaded (from a local server laid out like the real host), checked, ported for the
config's model and loaded, the new parts left to the model. The weights are random files of the real architecture
(no real weights in the repository); their SHA-256 is given to the suite through SUITE_HUB_TABLE, as a mirror of
one's own would be. The runs are shrunk for a CPU (one epoch, small images) through -opts; nothing about the
weights is passed. Inception v4 and PIM's Swin-L run with SUITE_SLOW_TESTS=1 (large files, minutes on a CPU)."""
import hashlib
import json
import os
import re
import subprocess

import pytest

from tests.helpers import REPO, env, read_json
from tests.hub_server import serve_folder

torch = pytest.importorskip("torch")
SLOW = pytest.mark.skipif(not os.environ.get("SUITE_SLOW_TESTS"), reason="SUITE_SLOW_TESTS=1: large random files")
SHRINK = ["TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "DATA.NUM_WORKERS", "0", "AMP.ENABLE", "False",
          "REPORT_FREQ", "4", "MODEL.NUM_CLASSES", "8"]   # the demo data have 8 classes


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _random_state(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.02 + (1.0 if name.endswith(("running_var", "bn.weight")) else 0.0))
    return {k: v.contiguous() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """(www root, {published name: table fields}) filled by the tests' publish()."""
    return tmp_path_factory.mktemp("www"), {}


def publish_torchvision(mirror, name, file, module):
    root, table = mirror
    path = root / "models" / file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_random_state(module, 0), str(path))
    table[name] = {"sha256": _sha256(path), "sha256_prefix": None, "hash_note": "test mirror"}


def publish_timm(mirror, name, module):
    from safetensors.torch import save_file
    root, table = mirror
    path = root / "timm" / name.split("/", 1)[1] / "resolve" / "main" / "model.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(_random_state(module, 0), str(path))
    table[name] = {"sha256": _sha256(path), "hash_note": "test mirror"}


def few_images(data, tmp_path, per_class_train=1, per_class_val=1):
    """-opts for list files with the first images of each class (the large models run in minutes, not hours)."""
    opts = []
    for split, n, key in (("train", per_class_train, "DATA.TRAIN_LIST"), ("val", per_class_val, "DATA.VAL_LIST")):
        rows = [r for r in open(os.path.join(data, f"{split}_list.txt")) if r.strip()]
        picked = [r for label in sorted({r.split()[1] for r in rows}) for r in
                  [x for x in rows if x.split()[1] == label][:n]]
        path = tmp_path / f"few_{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(picked))
        opts += [key, str(path)]
    return opts


def run_finetune(mirror, tmp_path, cfg, data, opts):
    root, table = mirror
    tmp_path.mkdir(parents=True, exist_ok=True)
    table_file = tmp_path / "table.json"
    table_file.write_text(json.dumps(table))
    out = tmp_path / "run"
    with serve_folder(root) as (url, handler):
        proc = subprocess.run(["sh", "run_train_multi.sh", "-cfg", cfg, "-data_path", data, "-output", str(out),
                               "-opts", *SHRINK, *opts], cwd=REPO, capture_output=True, text=True, timeout=1800,
                              env=env(SUITE_CACHE=str(tmp_path.parent / "cache"), SUITE_HUB_ENDPOINT=url,
                                      SUITE_TORCHVISION_ENDPOINT=url, SUITE_HUB_TABLE=str(table_file)))
        requests = list(handler.requests)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert len(read_json(out / "metrics.json")["history"]) == 1
    return log, requests, proc.stderr


def loaded_tensors(log, name, spec):
    found = re.search(rf"loaded pretrained weights from \S*ported/{re.escape(name)}--{spec}\.pdparams "
                      r"\((\d+) tensors\)", log)
    assert found, log[-3000:]
    return int(found.group(1))


def test_dynamic_mlp_and_transfer_resnet50_start_from_torchvision_by_name(mirror, small_demo, tmp_path):
    import torchvision
    name = "torchvision/resnet50.IMAGENET1K_V1"
    publish_torchvision(mirror, name, "resnet50-0676ba61.pth", torchvision.models.resnet50())
    small = ["DATA.IMAGE_SIZE", "64", "DATA.BATCH_SIZE", "16"]

    log, requests, stderr = run_finetune(mirror, tmp_path / "dmlp", "configs/dynamic_mlp/resnet50_dynamic_mlp_c.yaml",
                                         small_demo, small)
    assert requests == ["/models/resnet50-0676ba61.pth"] and "download resnet50-0676ba61.pth" in stderr
    # the backbone's 265 tensors (parameters and BatchNorm statistics) come from the file; fc, loc_net and loc_att
    # stay as the model initialised them
    assert loaded_tensors(log, name, "resnet50_dynamic_mlp_c") == 265
    assert "kept the new classifier (fc.weight, fc.bias, loc_net.feats.0.weight" in log

    small_tf = ["DATA.IMAGE_SIZE", "64", "DATA.RESIZE_SIZE", "72", "DATA.BATCH_SIZE", "16"]
    log, requests, _ = run_finetune(mirror, tmp_path / "transfer", "configs/transfer/resnet50_cub.yaml", small_demo,
                                    small_tf)
    assert requests == []                    # the file is cached: ported for this model without a request
    assert loaded_tensors(log, name, "resnet50") == 265     # the 1000-class fc left out (8 classes here)
    assert "new layers (TRANSFER.NEW_LAYERS 1), re-initialised: fc" in log


@SLOW
def test_transfer_inception_v4_starts_from_timm_by_name(mirror, small_demo, tmp_path):
    import timm
    name = "timm/inception_v4.tf_in1k"
    publish_timm(mirror, name, timm.create_model("inception_v4", pretrained=False))
    log, requests, _ = run_finetune(mirror, tmp_path, "configs/transfer/inception_v4_aircraft.yaml", small_demo,
                                    ["DATA.IMAGE_SIZE", "75", "DATA.BATCH_SIZE", "8", *few_images(small_demo, tmp_path)])
    assert requests == ["/timm/inception_v4.tf_in1k/resolve/main/model.safetensors"]
    assert loaded_tensors(log, name, "inception_v4") > 400


@SLOW
def test_pim_swin_large_starts_from_timm_by_name(mirror, small_demo, tmp_path):
    import timm
    name = "timm/swin_large_patch4_window12_384.ms_in22k"
    publish_timm(mirror, name, timm.create_model("swin_large_patch4_window12_384", pretrained=False,
                                                 num_classes=21841))
    log, requests, _ = run_finetune(mirror, tmp_path, "configs/pim/cub_swin_large_384.yaml", small_demo,
                                    ["DATA.BATCH_SIZE", "4", "DATA.BATCH_SIZE_EVAL", "4",
                                     *few_images(small_demo, tmp_path)])
    assert requests == ["/timm/swin_large_patch4_window12_384.ms_in22k/resolve/main/model.safetensors"]
    assert loaded_tensors(log, name, "pim_backbone_swin_large_patch4_window12_384") > 300
