"""Dynamic MLP (image + location / date): top-k predictions for an image, a folder or a list file (common/inference.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.inference import predict_main  # noqa: E402
from dynamic_mlp.method import DynamicMLPMethod  # noqa: E402

if __name__ == "__main__":
    predict_main(DynamicMLPMethod())
