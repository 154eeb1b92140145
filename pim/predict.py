"""PIM: top-k predictions of MODEL.PIM.MAIN_HEAD (the combiner by default) for an image, a folder or a list file
(common/inference.py; pim/infer.py adds the confusion matrix)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

from common.inference import predict_main  # noqa: E402
from pim.method import PIMMethod  # noqa: E402

if __name__ == "__main__":
    predict_main(PIMMethod())
