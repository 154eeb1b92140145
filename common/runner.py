"""The body of every `main_multi_gpu.py`: arguments -> config -> model and data -> train or evaluate."""
import json
import logging
import os
import random
import signal

import numpy as np
import paddle

from common import dist
from common.checkpoint import load_pretrained
from common.cli import build_parser, config_from_args
from common.config import ConfigError, config_warnings, save_config
from common.data.build import build_datasets, build_eval_loader
from common.data.loader import shared_memory_warning
from common.engine.trainer import Trainer, evaluate
from common.errors import OutputError, RunExistsError, SuiteError, add_error_sink, run_entry
from common.logger import ScalarWriter, setup_logger
from common.outdir import atomic_write_text, claim_output, holds_run
from common.proctree import die_with_parent
from common.report import Progress, write_class_report


def eval_predictor(config, device):
    """How -eval uses the exported model in Paddle Inference: "always" (-predictor), "auto" (CPU, float32: when the
    first batch says dygraph would take EVAL.PREDICTOR_MIN_SECONDS or more, since there the predictor is 2-4x
    faster and its export, 2-5 s, has paid for itself; README, Benchmark) or None (dygraph)."""
    if config.EVAL.PREDICTOR:
        return "always"
    if device == "cpu" and not config.AMP.ENABLE and float(config.EVAL.PREDICTOR_MIN_SECONDS) > 0:
        return "auto"
    return None


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    paddle.seed(seed)


def resolve_resume(config):
    """The checkpoint to resume from. For '-resume auto' rank 0 decides and every rank follows: on nodes without a
    shared file system the ranks could otherwise split between resuming and starting afresh."""
    path = config.MODEL.RESUME
    if path == "auto":
        candidate = os.path.join(config.SAVE.OUTPUT, "last.pdparams")
        path = candidate if os.path.isfile(candidate) else ""
        if dist.world_size() > 1:
            path = dist.all_gather_object(path)[0]
    if path and not os.path.isfile(path):
        raise FileNotFoundError(2, "checkpoint to resume from not found" + (
            " on this node (rank 0 has it)" if config.MODEL.RESUME == "auto" else ""), path)
    return path


def claim_output_on_all_ranks(config):
    """Rank 0 checks and claims the output folder (writable, not in use, no earlier run unless resumed or started
    over); every rank then takes the same decision, so a refused run stops everywhere at once."""
    problem, note = None, ""
    if dist.rank() == 0:
        try:
            note = claim_output(config.SAVE.OUTPUT, training=not config.EVAL.ONLY,
                                resuming=bool(config.MODEL.RESUME), start_over=config.SAVE.START_OVER)
        except SuiteError as e:
            problem = (type(e).__name__, str(e))
    decided = dist.all_gather_object(problem)[0] if dist.world_size() > 1 else problem
    if decided:
        cls = {c.__name__: c for c in (OutputError, RunExistsError)}.get(decided[0], SuiteError)
        raise cls(decided[1] if dist.rank() == 0 else f"rank 0 refused the output folder: {decided[1]}")
    return note


def eval_output(config):
    """(folder, reason) where -eval writes its log, config_eval.yaml and eval_metrics.json: `<output>/eval/` when
    <output> holds a training run (last.pdparams or metrics.json) or the evaluated checkpoint, so that the run's
    own log.txt and config.yaml are never appended to or replaced; else <output> itself."""
    out = config.SAVE.OUTPUT
    markers = holds_run(out) if os.path.isdir(out) else []
    if markers:
        return os.path.join(out, "eval"), f"it holds a training run ({', '.join(markers)})"
    pretrained = config.MODEL.PRETRAINED
    if pretrained and os.path.dirname(os.path.abspath(pretrained)) == os.path.abspath(out):
        return os.path.join(out, "eval"), f"it holds the evaluated checkpoint {os.path.basename(pretrained)}"
    return out, None


def check_ngpus(ngpus):
    """PaddleViT's -ngpus: the launcher (run_*_multi.sh) starts that many processes and does not pass the flag on;
    a process started directly runs alone, so only -ngpus 1 (or -1: all) fits it."""
    world = dist.world_size()
    if ngpus is not None and ngpus > 0 and ngpus != world:
        raise ConfigError(f"-ngpus {ngpus}: this process runs as {world} process(es); the process count is set by "
                          f"the launcher: sh run_train_multi.sh ... -ngpus {ngpus} (or run_eval_multi.sh): "
                          f"{ngpus} GPUs, or on a CPU machine {ngpus} processes (as NPROC={ngpus})")


def training_class_names(config, train_set):
    """The class names in label order when the data names them: classes.txt, or the class folders."""
    names = getattr(train_set, "classes", None)
    if names:
        return [str(n) for n in names]
    if config.DATA.DATASET == "folder" and config.DATA.DATA_PATH:
        from common.data.datasets import class_folder_names
        folder = os.path.join(config.DATA.DATA_PATH, config.DATA.TRAIN_DIR)
        if os.path.isdir(folder):
            names = class_folder_names(folder)
            return names if len(names) == config.MODEL.NUM_CLASSES else None
    return None


def eval_class_names(config, val_set):
    """Names for -eval's per-class report: classes.txt under -data_path, else the class folders (as
    `build_datasets` labels them), else None (the report shows class indices only)."""
    names = training_class_names(config, val_set)
    if names is None and config.DATA.DATASET == "folder" and config.DATA.DATA_PATH:
        from common.data.datasets import class_folder_names
        folder = os.path.join(config.DATA.DATA_PATH, config.DATA.VAL_DIR)
        if os.path.isdir(folder):
            names = class_folder_names(folder)
    return names if names and len(names) == config.MODEL.NUM_CLASSES else None


def classes_text(names):
    """classes.txt: one name per line in label order; as 'label name' lines when a plain name would read as one
    (`common.data.datasets.read_class_names` takes both forms)."""
    if any(n.partition(" ")[0].isdigit() and n.partition(" ")[2].strip() for n in names):
        return "".join(f"{i} {n}\n" for i, n in enumerate(names))
    return "".join(f"{n}\n" for n in names)


def _log_errors_to(logger):
    """The error line also goes to the run's log files (not a second time to the console)."""
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]

    def write(line):
        for h in files:
            h.stream.write(line + "\n")
            h.flush()
    add_error_sink(write)


def run(method, argv=None):
    """Returns the final validation metrics (dict) on every rank."""
    args = build_parser(f"{method.name}: train or evaluate").parse_args(argv)
    if "PADDLE_TRAINER_ID" in os.environ:   # a rank of Paddle's launcher: end with it, even if it is killed
        die_with_parent(signal.SIGTERM)
    notes = []
    config = config_from_args(args, method.get_config(), notes=notes)
    device = dist.setup_device()
    threads = dist.set_cpu_threads() if device == "cpu" else None
    dist.init()
    check_ngpus(args.ngpus)
    rank = dist.rank()
    if config.EVAL.ONLY:
        decided = eval_output(config) if rank == 0 else None
        if dist.world_size() > 1:
            decided = dist.all_gather_object(decided)[0]
        if decided[1]:
            notes.append(f"evaluation output in {decided[0]} (not {config.SAVE.OUTPUT}: {decided[1]}, whose log.txt "
                         f"and config.yaml are left as they are)")
            config.defrost()
            config.SAVE.OUTPUT = decided[0]
            config.freeze()
    out_dir = config.SAVE.OUTPUT
    note = claim_output_on_all_ranks(config)
    logger = setup_logger(out_dir, rank)
    _log_errors_to(logger)
    if note:
        logger.info(note)
    for line in notes:
        logger.info(line)
    if rank == 0:
        save_config(config, os.path.join(out_dir, "config_eval.yaml" if config.EVAL.ONLY else "config.yaml"))
    where = f"{device} (math threads per process: {threads})" if threads else device
    logger.info(f"{method.name}: {'evaluation' if config.EVAL.ONLY else 'training'} on {where}, "
                f"{dist.world_size()} process(es); output in {out_dir}")
    warnings = config_warnings(config) + [shared_memory_warning(config.DATA.NUM_WORKERS, config.DATA.SHARED_MEMORY)]
    for warning in filter(None, warnings):
        logger.info(f"warning: {warning}")
    # the same initial weights on every rank; per-rank randomness is re-derived each epoch
    seed_everything(config.SEED)
    model = method.build_model(config)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    logger.info(f"model {config.MODEL.NAME}: {n_params / 1e6:.2f}M trainable parameters")
    kept_new = None
    if config.MODEL.PRETRAINED:
        # a published name (timm/..., torchvision/...) or a PyTorch file is fetched / ported and cached here, when
        # the weights are loaded (the config keeps the name: nothing touches the network before)
        kept_new = load_pretrained(model, config.MODEL.PRETRAINED, new_head=config.MODEL.PRETRAINED_NEW_HEAD,
                                   prefer_ema=config.EVAL.ONLY and config.EVAL.USE_EMA, log=logger.info,
                                   model_name=config.MODEL.NAME, method=config.MODEL.METHOD or None)
    if config.EVAL.ONLY and (not config.MODEL.PRETRAINED or kept_new):
        # scored all the same (a baseline can be wanted), but never mistaken for a trained model's accuracy
        what = ("no weights were given (-pretrained): the model's initial weights" if not config.MODEL.PRETRAINED
                else f"{config.MODEL.PRETRAINED} did not fill the classifier ({', '.join(kept_new[:3])}"
                     f"{', ...' if len(kept_new) > 3 else ''}): it is as initialised")
        logger.info(f"warning: evaluating with {what}; give a trained checkpoint with -pretrained")

    if config.EVAL.ONLY:
        head = method.main_head_of(model)
        _, val_set = build_datasets(config, method, train=False, val=True)
        loader = build_eval_loader(config, val_set)
        heads_fn = None
        use_predictor = eval_predictor(config, device)
        if use_predictor:
            from common.export import PredictorEval
            heads_fn = PredictorEval(method, config, model, device, logger.info, batches=len(loader),
                                     min_seconds=float(config.EVAL.PREDICTOR_MIN_SECONDS) if use_predictor == "auto"
                                     else None)
        progress = (Progress("eval", len(val_set), logger.info, every=config.REPORT_FREQ, scale=dist.world_size())
                    if rank == 0 else None)
        metrics, classes = evaluate(model, method, loader, config, device, heads_fn,
                                    per_class=True, progress=progress)
        logger.info(Trainer._format_metrics(f"eval on {metrics['count']} images", metrics))
        if rank == 0:
            atomic_write_text(os.path.join(out_dir, "eval_metrics.json"), json.dumps(metrics, indent=1))
            write_class_report(out_dir, classes, eval_class_names(config, val_set),
                               f"{config.MODEL.NAME}, head '{head}': top-1 {metrics['top1']:.2f}% on "
                               f"{metrics['count']} images", logger.info)
        return metrics

    method.prepare_training(config, model, logger.info)
    train_set, val_set = build_datasets(config, method)
    trainer = Trainer(config, method, model, out_dir, logger, device)
    trainer.class_names = training_class_names(config, train_set)
    if trainer.class_names and rank == 0:
        atomic_write_text(os.path.join(out_dir, "classes.txt"), classes_text(trainer.class_names))
    trainer.setup(train_set, val_set)
    resume = resolve_resume(config)
    if resume:
        trainer.resume(resume)
    elif config.MODEL.RESUME == "auto":
        logger.info(f"-resume auto: no checkpoint in {out_dir} yet, starting a new run")
    if trainer.start_epoch > config.TRAIN.EPOCHS:
        logger.info(f"nothing to train: the run in {out_dir} already finished {trainer.start_epoch - 1} of "
                    f"TRAIN.EPOCHS {config.TRAIN.EPOCHS} epochs (best top1 {trainer.best['top1']:.2f} at epoch "
                    f"{trainer.best['epoch']}); to train longer, resume with a larger TRAIN.EPOCHS")
        trainer.write_run_report()
        return trainer.last_metrics()
    writer = ScalarWriter(os.path.join(out_dir, "vdl"), config.VISUALDL and rank == 0)
    try:
        return trainer.fit(writer)
    finally:
        writer.close()


def main(method, argv=None):
    """CLI entry: every failure becomes one `error:` line and a documented exit code (common/errors.py)."""
    return run_entry(run, method, argv)
