"""Turn an official download into the suite's list layout, without copying images.

    python -m common.prepare DATASET --src DOWNLOAD_DIR --dst DATA_DIR [options]

DATASET is one of imagenet, cub, nabirds, inat21, inat21_mini, aircraft, cars, dtd, caltech256, folder. DST gets
`train_list.txt`, `val_list.txt` (lines `path label [extra ...]`, paths relative to DST), `classes.txt` (one name per
line, in label order), `prepare_info.json`, and per data set extra split files or mappings. See README.md,
"Preparing data", and `python -m common.prepare DATASET --help`.
"""
from .cli import DATASETS, main, prepare
from .core import PrepareError

__all__ = ["DATASETS", "PrepareError", "main", "prepare"]
