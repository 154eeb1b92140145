"""What a method folder tells the shared engine. The defaults describe a plain image classifier; a method
overrides only what differs (extra inputs, several heads, its own loss terms)."""
import paddle
import paddle.nn.functional as F

from common.config import ConfigError, get_default_config
from common.data.transforms import build_eval_transform, build_train_transform

MAIN_HEAD = "main"   # the name of a single-head model's prediction


class ClassificationMethod:
    """Stateless: what `build_model` / `prepare_training` decide for a model is recorded on that model (e.g. PIM's
    `model.pim_settings`), and every hook that depends on it takes the model, so one method object serves any
    number of models, and a hook never sees settings left over from another model."""
    name = "classifier"

    def get_config(self):
        """Common defaults plus the method's own keys (override and extend)."""
        return get_default_config()

    def build_model(self, config):
        """The paddle Layer for `config`; the engine calls it directly: `model(images, *extra inputs)`."""
        raise NotImplementedError

    def read_samples(self, config, split):
        """Samples (`common.data.datasets.Sample`) of `split` ('train' / 'val') for a data layout the method reads
        itself (e.g. an annotation file), or None to let the engine read DATA.DATASET 'list' / 'folder'."""
        return None

    def meta_fn(self, config):
        """Extra list-file columns -> float32 vector passed to the model, or None for image-only methods."""
        return None

    def train_transform(self, config):
        return build_train_transform(config)

    def eval_transform(self, config):
        return build_eval_transform(config)

    def main_head_of(self, model):
        """The head of `model` that -eval reports, "best" tracks, prediction and export use."""
        return MAIN_HEAD

    def loss(self, criterion, outputs, targets, model):
        """(total loss, {name: extra term to log})."""
        return criterion(outputs, targets), {}

    def eval_heads(self, model, outputs):
        """{head name: logits} of `model`'s outputs to score; the engine reports each and tracks
        `main_head_of(model)`."""
        return {self.main_head_of(model): outputs}

    def lr_mult_fn(self, config, model):
        """name -> learning-rate multiplier for parameter groups, or None for one rate."""
        return None

    def prepare_training(self, config, model, log):
        """Called once per training run, after -pretrained weights are loaded and before the optimizer is built
        (when resuming: before the checkpoint is restored); e.g. re-initialise layers or snapshot the starting
        weights. Not called for -eval."""
        return None

    def export_inputs(self, config):
        """Extra model inputs besides the image, as [(name, shape without the batch axis, dtype)], for export."""
        return []

    def export_input_sources(self, config):
        """{extra input name: how `python -m common.deploy` builds it}, recorded in inference.json: e.g.
        `common.metadata.export_source(subset)` for latitude / longitude / date from the list-file columns or the
        -lat / -lon / -date flags. An extra input without a source is refused by common.deploy."""
        return {}

    def has_unused_parameters(self, config):
        """Whether this configuration leaves trainable parameters out of the model's outputs (e.g. a branch the
        method skips in training); with several processes DataParallel then needs find_unused_parameters=True
        (DIST.FIND_UNUSED_PARAMETERS 'auto' asks this, after `prepare_training`). Paddle's reducer traverses the
        graph from every output of the model, so that flag does not cover parameters that feed an output the loss
        leaves out (a head with loss weight 0): freeze those in `prepare_training` (stop_gradient), as PIM does."""
        return False

    def sync_batchnorm(self, model):
        """Replace the model's BatchNorm layers by paddle.nn.SyncBatchNorm in place (MODEL.SYNC_BN). Returns (names
        converted, names kept): only Paddle's own BatchNorm classes are converted; a subclass with a forward of its
        own (e.g. PIM's token-wise BatchNorm) is kept per-process, since SyncBatchNorm would drop that forward."""
        return convert_sync_batchnorm(model)


# the layers paddle.nn.SyncBatchNorm stands in for (subclasses excepted: their forward may differ)
BATCH_NORMS = (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm3D)


def convert_sync_batchnorm(model):
    """(converted, kept) sublayer names; see `ClassificationMethod.sync_batchnorm`. The SyncBatchNorm layers take
    over the same weight, bias and running-statistics tensors (Paddle's convert_sync_batchnorm), so an optimizer
    built before, the EMA and the checkpoint keys are unaffected."""
    converted, kept = [], []

    def walk(layer, prefix):
        for name, child in list(layer.named_children()):
            path = f"{prefix}{name}"
            if type(child) in BATCH_NORMS:
                layer.add_sublayer(name, paddle.nn.SyncBatchNorm.convert_sync_batchnorm(child))
                converted.append(path)
            elif isinstance(child, (paddle.nn.layer.norm._BatchNormBase, paddle.nn.BatchNorm)) and \
                    not isinstance(child, paddle.nn.SyncBatchNorm):
                kept.append(path)
            else:
                walk(child, path + ".")
    walk(model, "")
    return converted, kept


def find_unused_parameters(config, method):
    """DataParallel's find_unused_parameters from DIST.FIND_UNUSED_PARAMETERS: None / 'auto' ask the method."""
    value = config.DIST.FIND_UNUSED_PARAMETERS
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return bool(method.has_unused_parameters(config))
    if isinstance(value, bool):
        return value
    raise ConfigError(f"DIST.FIND_UNUSED_PARAMETERS {value!r}: must be auto, True or False")


def eval_loss_sum(logits, labels):
    return F.cross_entropy(logits.astype("float32"), labels, reduction="sum")
