"""PIM: train or evaluate.  python pim/main_multi_gpu.py -cfg configs/pim/cub_swin_large_384.yaml -data_path ..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.runner import main  # noqa: E402
from pim.method import PIMMethod  # noqa: E402

if __name__ == "__main__":
    main(PIMMethod())
