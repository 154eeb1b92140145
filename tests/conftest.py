import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """A small copy of the demo data set (8 classes, 16 train / 8 val images each)."""
    from common.demo_data import make_demo_data
    root = tmp_path_factory.mktemp("demo_small")
    return str(make_demo_data(str(root), train_per_class=16, val_per_class=8, seed=1))


@pytest.fixture(scope="session")
def demo_full(tmp_path_factory):
    from common.demo_data import make_demo_data
    root = tmp_path_factory.mktemp("demo_full")
    return str(make_demo_data(str(root)))
