"""What Dynamic MLP tells the shared engine: its config, models, the metadata input and the iNat21 json layout."""
import os

from common.data.datasets import DataError, read_list_file
from common.logger import get_logger
from common.method import ClassificationMethod
from dynamic_mlp.config import get_config
from dynamic_mlp.inat import read_inat_json
from dynamic_mlp.metadata import MetadataEncoder, export_source, input_dim
from dynamic_mlp.model import build_from_config, uses_metadata

logger = get_logger(__name__)


def config_uses_metadata(config):
    return uses_metadata(config.MODEL.NAME, config.MODEL.DYNAMIC_MLP.TYPE or None)


def read_split(config, split):
    """Samples for `split`, or None to leave the reading to the engine.

    DATA.DATASET 'inat21_json': DATA.TRAIN_JSON / DATA.VAL_JSON under DATA_PATH. 'list' with a metadata model: the
    list files, with every metadata row parsed now so that a bad value fails before training, naming its line.
    """
    d = config.DATA
    wants_meta = config_uses_metadata(config)
    if d.DATASET == "inat21_json":
        samples = read_inat_json(os.path.join(d.DATA_PATH, d.TRAIN_JSON if split == "train" else d.VAL_JSON),
                                 d.DATA_PATH, config.MODEL.NUM_CLASSES)
    elif d.DATASET == "list" and wants_meta:
        samples = read_list_file(os.path.join(d.DATA_PATH, d.TRAIN_LIST if split == "train" else d.VAL_LIST),
                                 d.DATA_PATH, config.MODEL.NUM_CLASSES)
    elif d.DATASET == "folder" and wants_meta:
        raise DataError(f"{config.MODEL.NAME} needs latitude, longitude and date per image, which class folders do "
                        "not carry: use list files ('path label lat lon YYYY-MM-DD') or DATA.DATASET inat21_json, "
                        "or an image-only model (MODEL.DYNAMIC_MLP.TYPE none)")
    else:
        return None
    if wants_meta:
        missing = MetadataEncoder(config.MODEL.DYNAMIC_MLP.METADATA).check(samples)
        logger.info("%s split: %d images, %d without complete metadata (encoded as zeros)", split, len(samples),
                    missing)
    return samples


class DynamicMLPMethod(ClassificationMethod):
    name = "dynamic_mlp"

    def get_config(self):
        return get_config()

    def build_model(self, config):
        return build_from_config(config)

    def read_samples(self, config, split):
        return read_split(config, split)

    def meta_fn(self, config):
        return MetadataEncoder(config.MODEL.DYNAMIC_MLP.METADATA) if config_uses_metadata(config) else None

    def export_inputs(self, config):
        # the deployed model takes the encoded vector (dynamic_mlp.metadata.encode; zeros when unknown)
        if not config_uses_metadata(config):
            return []
        return [("metadata", (input_dim(config.MODEL.DYNAMIC_MLP.METADATA),), "float32")]

    def export_input_sources(self, config):
        # common.deploy encodes -lat / -lon / -date or the list-file columns itself (common.metadata)
        if not config_uses_metadata(config):
            return {}
        return {"metadata": export_source(config.MODEL.DYNAMIC_MLP.METADATA)}
