"""The body of every `main_multi_gpu.py`: arguments -> config -> model and data -> train or evaluate."""
import json
import os
import random
import sys

import numpy as np
import paddle

from common import dist
from common.checkpoint import CheckpointMismatchError, load_pretrained
from common.cli import build_parser, config_from_args
from common.config import ConfigError, save_config
from common.data.datasets import DataError
from common.engine.trainer import NonFiniteLossError, Trainer, build_datasets, build_eval_loader, evaluate
from common.logger import ScalarWriter, setup_logger
from common.safe_pickle import UnsafePickleError


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    paddle.seed(seed)


def resolve_resume(config):
    path = config.MODEL.RESUME
    if path == "auto":
        candidate = os.path.join(config.SAVE.OUTPUT, "last.pdparams")
        return candidate if os.path.isfile(candidate) else ""
    return path


def run(method, argv=None):
    """Returns the final validation metrics (dict) on every rank."""
    args = build_parser(f"{method.name}: train or evaluate").parse_args(argv)
    config = config_from_args(args, method.get_config())
    device = dist.setup_device()
    threads = dist.set_cpu_threads() if device == "cpu" else None
    dist.init()
    rank = dist.rank()
    out_dir = config.SAVE.OUTPUT
    os.makedirs(out_dir, exist_ok=True)
    logger = setup_logger(out_dir, rank)
    if rank == 0:
        save_config(config, os.path.join(out_dir, "config_eval.yaml" if config.EVAL.ONLY else "config.yaml"))
    where = f"{device} (math threads per process: {threads})" if threads else device
    logger.info(f"{method.name}: {'evaluation' if config.EVAL.ONLY else 'training'} on {where}, "
                f"{dist.world_size()} process(es); output in {out_dir}")
    # the same initial weights on every rank; per-rank randomness is re-derived each epoch
    seed_everything(config.SEED)
    model = method.build_model(config)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    logger.info(f"model {config.MODEL.NAME}: {n_params / 1e6:.2f}M trainable parameters")
    if config.MODEL.PRETRAINED:
        load_pretrained(model, config.MODEL.PRETRAINED, new_head=config.MODEL.PRETRAINED_NEW_HEAD, log=logger.info)

    if config.EVAL.ONLY:
        _, val_set = build_datasets(config, method, train=False, val=True)
        heads_fn = None
        if config.EVAL.PREDICTOR:
            from common.export import predictor_heads
            heads_fn = predictor_heads(method, config, model, device)
            logger.info(f"evaluating through the exported model in Paddle Inference (head '{method.main_head}')")
        metrics = evaluate(model, method, build_eval_loader(config, val_set), config, device, heads_fn)
        logger.info(Trainer._format_metrics(f"eval on {metrics['count']} images", metrics))
        if rank == 0:
            with open(os.path.join(out_dir, "eval_metrics.json"), "w") as f:
                json.dump(metrics, f, indent=1)
        return metrics

    method.prepare_training(config, model, logger.info)
    train_set, val_set = build_datasets(config, method)
    trainer = Trainer(config, method, model, out_dir, logger, device)
    trainer.setup(train_set, val_set)
    resume = resolve_resume(config)
    if resume:
        trainer.resume(resume)
    writer = ScalarWriter(os.path.join(out_dir, "vdl"), config.VISUALDL and rank == 0)
    try:
        return trainer.fit(writer)
    finally:
        writer.close()


def main(method, argv=None):
    """CLI entry: clear one-line errors for bad input instead of tracebacks."""
    try:
        run(method, argv)
    except (ConfigError, DataError, FileNotFoundError, CheckpointMismatchError, UnsafePickleError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
