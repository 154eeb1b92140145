"""ResMLP: train or evaluate.  python resmlp/main_multi_gpu.py -cfg configs/resmlp/resmlp_24_224.yaml ..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.runner import main  # noqa: E402
from resmlp.method import ResMLPMethod  # noqa: E402

if __name__ == "__main__":
    main(ResMLPMethod())
