"""What ResMLP tells the shared engine: its config keys and how to build the model."""
from common.config import ConfigError
from common.method import ClassificationMethod
from resmlp.config import get_config
from resmlp.resmlp import create_resmlp, resmlp_arch

FLOAT16_MIN_NORMAL = 2.0 ** -14     # 6.1e-5: smaller float16 numbers are subnormal (fewer significant bits)


def layer_scale_init(config):
    """The layer-scale init the model is built with: MODEL.MIXER.INIT_VALUES, else the variant's own value."""
    value = config.MODEL.MIXER.INIT_VALUES
    return float(value) if value > 0 else float(resmlp_arch(config.MODEL.NAME)["init_values"])


def check_amp_layer_scale(config):
    """AMP O2 float16 keeps the layer scales and the whole residual stream in float16. A layer-scale init below
    float16's smallest normal number (resmlp_24: 1e-5, resmlp_36 and big_24: 1e-6) puts the layer scales and the
    scaled branches (ls * branch) in the subnormal range, with a few significant bits or none, and their sum with
    the residual is lost in float16; so a run from scratch is refused. bfloat16 has float32's range; O1 computes the
    scaled branch and the residual sum in float32 (the layer scales stay float32 parameters)."""
    amp = config.AMP
    if not (amp.ENABLE and amp.LEVEL == "O2" and amp.DTYPE == "float16"):
        return
    init = layer_scale_init(config)
    if init < FLOAT16_MIN_NORMAL:
        source = "MODEL.MIXER.INIT_VALUES" if config.MODEL.MIXER.INIT_VALUES > 0 else \
            f"MODEL.MIXER.INIT_VALUES (the default of MODEL.NAME {config.MODEL.NAME})"
        raise ConfigError(
            f"{source} {init:g} is below float16's smallest normal number {FLOAT16_MIN_NORMAL:.3g}: under AMP.LEVEL "
            f"O2 with AMP.DTYPE float16 the layer scales and the residual branches they scale would train in "
            f"float16's subnormal range. Use AMP.DTYPE bfloat16 or AMP.LEVEL O1 (or start from -pretrained weights)")


class ResMLPMethod(ClassificationMethod):
    name = "resmlp"

    def get_config(self):
        return get_config()

    def build_model(self, config):
        m = config.MODEL
        overrides = dict(num_classes=m.NUM_CLASSES, image_size=config.DATA.IMAGE_SIZE,
                         in_channels=config.DATA.IMAGE_CHANNELS, dropout=m.DROPOUT, droppath=m.DROPPATH)
        for key, arg in (("PATCH_SIZE", "patch_size"), ("EMBED_DIM", "embed_dim"), ("DEPTH", "depth"),
                         ("MLP_RATIO", "mlp_ratio"), ("INIT_VALUES", "init_values")):
            value = m.MIXER[key]
            if value > 0:
                overrides[arg] = value
        return create_resmlp(m.NAME, **overrides)

    def prepare_training(self, config, model, log):
        """Training from scratch under AMP O2 float16 with a subnormal layer-scale init is refused
        (`check_amp_layer_scale`); with -pretrained weights the init does not apply, the loaded values are checked."""
        if not config.MODEL.PRETRAINED:
            check_amp_layer_scale(config)
            return
        amp = config.AMP
        if amp.ENABLE and amp.LEVEL == "O2" and amp.DTYPE == "float16":
            tiny = [n for n, p in model.named_parameters()
                    if n.rsplit(".", 1)[-1] in ("ls1", "ls2") and float(p.abs().min()) < FLOAT16_MIN_NORMAL]
            if tiny:
                log(f"note: {len(tiny)} layer-scale tensors of the pretrained weights hold values below float16's "
                    f"smallest normal number ({tiny[0]}, ...); AMP.DTYPE bfloat16 or AMP.LEVEL O1 keeps them in "
                    f"the normal range")
