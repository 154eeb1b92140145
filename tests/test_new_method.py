"""Adding a method is one folder plus its registrations: a toy method written into a temporary folder (outside the
repository, found through SUITE_METHOD_PATH) is listed by the model registry, built by create_model, and trained
one epoch through run_train_multi.sh, with nothing in common/ touched."""
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO, env, read_json

TOY_FILES = {
    "__init__.py": '"""A toy method: the smallest complete method folder."""\n',
    "model.py": '''
        """The toy's one model, registered where it is defined."""
        import paddle.nn as nn

        from common.models import register_model


        class ToyNet(nn.Layer):
            def __init__(self, num_classes):
                super().__init__()
                self.conv = nn.Conv2D(3, 8, 3, stride=2, padding=1)
                self.pool = nn.AdaptiveAvgPool2D(1)
                self.fc = nn.Linear(8, num_classes)

            def forward(self, x):
                return self.fc(self.pool(nn.functional.relu(self.conv(x))).flatten(1))


        register_model("toy_net", "toy", image_size=32, num_classes=8, description="a toy")
    ''',
    "method.py": '''
        from common.config import get_default_config
        from common.method import ClassificationMethod
        from toy.model import ToyNet


        class ToyMethod(ClassificationMethod):
            name = "toy"

            def get_config(self):
                c = get_default_config()
                c.MODEL.METHOD = "toy"
                return c

            def build_model(self, config):
                return ToyNet(config.MODEL.NUM_CLASSES)
    ''',
    "main_multi_gpu.py": '''
        from common.runner import main
        from toy.method import ToyMethod

        if __name__ == "__main__":
            main(ToyMethod())
    ''',
}
TOY_CONFIG = """\
DATA:
  IMAGE_SIZE: 32
  BATCH_SIZE: 16
  NUM_WORKERS: 0
MODEL:
  METHOD: toy
  NAME: toy_net
  NUM_CLASSES: 8
AUG:
  RAND_AUGMENT: ""
  RE_PROB: 0.0
  MIXUP_PROB: 0.0
TRAIN:
  EPOCHS: 1
  WARMUP_EPOCHS: 0
"""


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    (root / "toy").mkdir()
    for name, text in TOY_FILES.items():
        (root / "toy" / name).write_text(textwrap.dedent(text).lstrip())
    return root


def test_toy_method_is_registered_listed_and_built(toy_root):
    code = ("import common.models as m\n"
            "print(m.list_models('toy_*'), m.model_info('toy_net').method)\n"
            "print(type(m.create_model('toy_net', num_classes=3)).__name__)\n"
            "m.main(['toy_*'])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(SUITE_METHOD_PATH=str(toy_root)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "['toy_net'] toy" and lines[1] == "ToyNet"
    assert lines[-1].split()[:4] == ["toy_net", "toy", "296", "32"]       # the listing's row: 8*27+8 + 8*8+8


def test_toy_method_trains_one_epoch_through_run_train_multi(toy_root, small_demo, tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(TOY_CONFIG)
    out = tmp_path / "run"
    before = subprocess.run(["git", "status", "--porcelain", "common"], cwd=REPO, capture_output=True, text=True)
    proc = subprocess.run(["sh", "run_train_multi.sh", "-cfg", str(cfg), "-data_path", small_demo,
                           "-output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env(SUITE_METHOD_PATH=str(toy_root), SUITE_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert os.path.join(str(toy_root), "toy", "main_multi_gpu.py") in proc.stdout   # the launcher ran the toy
    metrics = read_json(out / "metrics.json")
    assert len(metrics["history"]) == 1 and metrics["history"][0]["val_count"] == 64
    assert (out / "last.pdparams").is_file()
    after = subprocess.run(["git", "status", "--porcelain", "common"], cwd=REPO, capture_output=True, text=True)
    assert before.stdout == after.stdout                                    # common/ untouched
