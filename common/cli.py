"""PaddleViT-style command line: single-dash flags for the common knobs, `-opts KEY VALUE ...` for any key."""
import argparse

from common.config import ConfigError, check_config, merge_opts, merge_yaml

# flag -> config key
FLAG_KEYS = {
    "dataset": "DATA.DATASET",
    "data_path": "DATA.DATA_PATH",
    "output": "SAVE.OUTPUT",
    "batch_size": "DATA.BATCH_SIZE",
    "batch_size_eval": "DATA.BATCH_SIZE_EVAL",
    "image_size": "DATA.IMAGE_SIZE",
    "accum_iter": "TRAIN.ACCUM_ITER",
    "pretrained": "MODEL.PRETRAINED",
    "resume": "MODEL.RESUME",
}


def build_parser(description="train or evaluate a model"):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-cfg", type=str, default=None, help="yaml config (may include others through BASE)")
    p.add_argument("-dataset", type=str, default=None, help="data layout: 'list' (train_list.txt/val_list.txt) "
                                                            "or 'folder' (class-per-folder train/ and val/)")
    p.add_argument("-data_path", type=str, default=None, help="data root holding the list files / folders")
    p.add_argument("-output", type=str, default=None, help="output folder (logs, checkpoints, config)")
    p.add_argument("-batch_size", type=int, default=None, help="training batch size per process")
    p.add_argument("-batch_size_eval", type=int, default=None, help="evaluation batch size per process")
    p.add_argument("-image_size", type=int, default=None)
    p.add_argument("-accum_iter", type=int, default=None, help="gradient accumulation steps")
    p.add_argument("-pretrained", type=str, default=None, help="weights to start from (.pdparams)")
    p.add_argument("-resume", type=str, default=None,
                   help="training checkpoint to continue from, or 'auto' for <output>/last.pdparams if present")
    p.add_argument("-eval", action="store_true", help="evaluate only")
    p.add_argument("-predictor", action="store_true",
                   help="with -eval: run the exported model in Paddle Inference (faster; main head only)")
    p.add_argument("-amp", action="store_true", help="automatic mixed precision (AMP.* keys for dtype/level)")
    p.add_argument("-opts", nargs="+", action="extend", default=[], metavar="KEY VALUE",
                   help="override any config key, e.g. -opts TRAIN.EPOCHS 10 TRAIN.BASE_LR 0.01 (may be repeated)")
    return p


def config_from_args(args, config):
    """Apply yaml then flags then -opts to `config` (the method's defaults), validate and freeze it."""
    if args.cfg:
        merge_yaml(config, args.cfg)
    config.defrost()
    opts = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            opts += [key, str(value)]
    if args.eval:
        opts += ["EVAL.ONLY", "True"]
    if args.amp:
        opts += ["AMP.ENABLE", "True"]
    if args.predictor:
        opts += ["EVAL.PREDICTOR", "True"]
    if len(args.opts) % 2:
        raise ConfigError(f"-opts needs KEY VALUE pairs, got {len(args.opts)} items: {' '.join(args.opts)}")
    merge_opts(config, opts + list(args.opts))
    check_config(config)
    config.freeze()
    return config
