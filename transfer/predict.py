"""Transfer (Inception v4, ResNet): top-k predictions for an image, a folder or a list file (common/inference.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.inference import predict_main  # noqa: E402
from transfer.method import TransferMethod  # noqa: E402

if __name__ == "__main__":
    predict_main(TransferMethod())
