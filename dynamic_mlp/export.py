"""Dynamic MLP (image + location / date): export for Paddle Inference / ONNX (see common/export.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.export import export_main  # noqa: E402
from dynamic_mlp.method import DynamicMLPMethod  # noqa: E402

if __name__ == "__main__":
    export_main(DynamicMLPMethod())
