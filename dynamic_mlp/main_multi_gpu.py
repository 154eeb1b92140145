"""Dynamic MLP: train or evaluate.  python dynamic_mlp/main_multi_gpu.py -cfg configs/dynamic_mlp/<run>.yaml ..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.runner import main  # noqa: E402
from dynamic_mlp.method import DynamicMLPMethod  # noqa: E402

if __name__ == "__main__":
    main(DynamicMLPMethod())
