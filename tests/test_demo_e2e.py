"""The main job: the demo ResMLP config trained and evaluated through the real scripts (15 of its 30 epochs, to keep
the suite short; the full run reaches about 82% top-1)."""
import os

from tests.helpers import REPO, read_json, run_cli

DEMO_CFG = os.path.join(REPO, "configs", "resmlp", "demo.yaml")
CHANCE = 100.0 / 8


def test_demo_training_learns_and_eval_reproduces_it(demo_full, tmp_path):
    out = str(tmp_path / "demo")
    proc = run_cli(["sh", "run_train_multi.sh", "-cfg", DEMO_CFG, "-data_path", demo_full, "-output", out,
                    "-opts", "VISUALDL", "False", "TRAIN.EPOCHS", "15"], timeout=1800)
    assert "final (epoch 15)" in proc.stdout
    last = read_json(os.path.join(out, "metrics.json"))["history"][-1]
    assert last["val_count"] == 200
    assert last["val_top1"] > 4 * CHANCE, last          # 50%: far above the 12.5% of guessing

    ev = str(tmp_path / "eval")
    run_cli(["sh", "run_eval_multi.sh", "-cfg", DEMO_CFG, "-data_path", demo_full, "-output", ev,
             "-pretrained", os.path.join(out, "last.pdparams")])
    metrics = read_json(os.path.join(ev, "eval_metrics.json"))
    assert metrics["correct"] == last["val_correct"]
