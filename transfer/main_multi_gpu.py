"""Transfer (non-binary fine-tuning of Inception v4; ResNet-50 fine-grained baseline): train or evaluate.
    python transfer/main_multi_gpu.py -cfg configs/transfer/inception_v4_aircraft.yaml -data_path data/aircraft"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.runner import main  # noqa: E402
from transfer.method import TransferMethod  # noqa: E402

if __name__ == "__main__":
    main(TransferMethod())
