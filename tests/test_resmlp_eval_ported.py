"""A ported timm checkpoint evaluated through the real `-eval -pretrained` command line gives exactly the
predictions of the timm model on the same preprocessed images."""
import os

import numpy as np
import pytest

from tests.helpers import REPO, read_json, resmlp_main, run_cli

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")


def test_ported_checkpoint_evaluates_like_timm(small_demo, tmp_path):
    from common.cli import build_parser, config_from_args
    from common.data.datasets import read_list_file
    from common.data.transforms import build_eval_transform
    from common.data.datasets import load_rgb
    from resmlp.config import get_config

    torch.manual_seed(0)
    ref = timm.create_model("resmlp_12_224", pretrained=False).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (timm zero-inits the head)
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    src = str(tmp_path / "resmlp_12.pth")
    torch.save(ref.state_dict(), src)
    dst = str(tmp_path / "resmlp_12.pdparams")
    run_cli(["python", "-m", "common.port", "--model", "resmlp_12_distilled_224", "--src", src, "--dst", dst])

    cfg_path = os.path.join(REPO, "configs", "resmlp", "resmlp_12_distilled_224.yaml")
    out = str(tmp_path / "eval")
    run_cli(resmlp_main("-cfg", cfg_path, "-eval", "-pretrained", dst, "-data_path", small_demo, "-output", out,
                        "-batch_size_eval", "16", "-opts", "DATA.NUM_WORKERS", "0", "DATA.CLASS_NAMES", "''"))
    ours = read_json(os.path.join(out, "eval_metrics.json"))

    cfg = config_from_args(build_parser().parse_args(["-cfg", cfg_path]), get_config())
    transform = build_eval_transform(cfg)
    samples = read_list_file(os.path.join(small_demo, "val_list.txt"), small_demo)
    images = np.stack([transform(load_rgb(s.path)) for s in samples])
    labels = np.array([s.label for s in samples])
    with torch.no_grad():
        logits = ref(torch.from_numpy(images)).numpy()
    assert ours["count"] == len(samples)
    assert ours["correct"] == int((logits.argmax(1) == labels).sum())
    # the mean cross-entropy depends on every logit of every image: a sensitive end-to-end check
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    ce = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))).mean()
    assert ours["loss"] == pytest.approx(ce, rel=1e-5)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert ours["top5"] == pytest.approx(100.0 * np.mean([l in t for l, t in zip(labels, top5)]))
