"""What a method folder tells the shared engine. The defaults describe a plain image classifier; a method
overrides only what differs (extra inputs, several heads, its own loss terms)."""
import paddle.nn.functional as F

from common.config import get_default_config
from common.data.transforms import build_eval_transform, build_train_transform


class ClassificationMethod:
    name = "classifier"
    main_head = "main"   # the prediction that -eval reports and "best" tracks

    def get_config(self):
        """Common defaults plus the method's own keys (override and extend)."""
        return get_default_config()

    def build_model(self, config):
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

    def forward(self, model, images, extras):
        return model(images, *extras) if extras else model(images)

    def loss(self, criterion, outputs, targets, model):
        """(total loss, {name: extra term to log})."""
        return criterion(outputs, targets), {}

    def eval_heads(self, outputs):
        """{head name: logits} to score; the engine reports each and tracks `main_head`."""
        return {self.main_head: outputs}

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

    def mixup_extras(self, config):
        """Whether mixup mixes the extra inputs (metadata) along with the images."""
        return True


def eval_loss_sum(logits, labels):
    return F.cross_entropy(logits.astype("float32"), labels, reduction="sum")
