"""What the transfer method tells the shared engine: the model, its transforms, new-layer re-initialisation,
per-group learning rates and the L2-SP loss term."""
from common.method import ClassificationMethod
from transfer import transforms
from transfer.config import check_transfer_config, get_config, norm_stats
from transfer.l2sp import L2SP
from transfer.model import LR_GROUPS, check_num_lowlrs, create_model, lr_groups, new_layer_blocks, \
    reinit_new_layers


class TransferMethod(ClassificationMethod):
    """The L2-SP penalty, whose starting weights `prepare_training` snapshots, is recorded on the model it was
    taken from (``model.l2sp``, None when off): the loss reads it from the model it is given."""
    name = "transfer"

    def get_config(self):
        return get_config()

    def build_model(self, config):
        check_transfer_config(config)
        m = config.MODEL
        model = create_model(m.NAME, num_classes=m.NUM_CLASSES, in_channels=config.DATA.IMAGE_CHANNELS,
                             drop_rate=m.DROPOUT)
        model.l2sp = None     # set by prepare_training
        return model

    def train_transform(self, config):
        return transforms.train_transform(config)

    def eval_transform(self, config):
        return transforms.eval_transform(config)

    def prepare_training(self, config, model, log):
        t = config.TRANSFER
        new_layer_blocks(model, t.NEW_LAYERS)            # bounds check before anything changes
        if t.NUM_LOWLRS >= 0:
            check_num_lowlrs(model, t.NUM_LOWLRS)
        renewed = reinit_new_layers(model, t.NEW_LAYERS)
        log(f"new layers (TRANSFER.NEW_LAYERS {t.NEW_LAYERS}), re-initialised: {', '.join(renewed)}")
        mean, std = norm_stats(config)
        log(f"normalisation: mean {list(mean)}, std {list(std)}"
            + (f" (DATA.NORM_STATS {config.DATA.NORM_STATS})" if config.DATA.NORM_STATS else ""))
        if t.NUM_LOWLRS >= 0:
            groups = lr_groups(model, t.NUM_LOWLRS)
            counts = {g: sum(1 for v in groups.values() if v == g) for g in LR_GROUPS}
            log("learning rates: " + ", ".join(f"{g} {lr:g} ({counts[g]} tensors)" for g, lr in zip(LR_GROUPS, t.LRS))
                + f"; the {t.NUM_LOWLRS} bottom body blocks are the low group")
        model.l2sp = None
        if t.L2SP.ENABLE:
            if not config.MODEL.PRETRAINED:
                log("warning: L2-SP without -pretrained pulls the weights towards their random initial values")
            s = t.L2SP
            model.l2sp = L2SP(model, t.NEW_LAYERS, t.NUM_LOWLRS, s.ALPHA, s.ALPHA_HIGH, s.BETA, s.MODE)
            log(f"{model.l2sp.summary()} (mode {s.MODE})")

    def lr_mult_fn(self, config, model):
        t = config.TRANSFER
        if t.NUM_LOWLRS < 0:
            return None
        mult = {g: lr / config.TRAIN.BASE_LR for g, lr in zip(LR_GROUPS, t.LRS)}
        groups = lr_groups(model, t.NUM_LOWLRS)
        return lambda name: mult[groups[name]]

    def loss(self, criterion, outputs, targets, model):
        base = criterion(outputs, targets)
        penalty = getattr(model, "l2sp", None)
        if penalty is None:
            return base, {}
        reg = penalty(model)
        return base + reg, {"l2sp": reg}
