"""The training / evaluation engine shared by every method."""
import contextlib
import json
import math
import os
import time

import numpy as np
import paddle

from common import dist
from common.checkpoint import (checkpoint_meta, restore_training_checkpoint, save_training_checkpoint,
                               training_state)
from common.data.build import build_eval_loader, build_loader, split_batch
from common.data.samplers import TrainBatchSampler
from common.engine.ema import ModelEma
from common.errors import NonFiniteError
from common.outdir import atomic_write_text
from common.engine.losses import ClassificationLoss
from common.engine.lr import build_scheduler
from common.engine.optim import build_optimizer
from common.method import eval_loss_sum


class NonFiniteLossError(NonFiniteError, RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------- eval
def amp_context(config, device):
    if not config.AMP.ENABLE:
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(enable=True, level=config.AMP.LEVEL, dtype=config.AMP.DTYPE)


def _finite_rows(logits):
    """[N] bool: rows whose logits are all finite."""
    return paddle.isfinite(logits).all(axis=1)


def dygraph_heads(model, method, images, extras, config, device="cpu"):
    """{head: logits} of one batch through the dygraph model, as evaluation scores it."""
    with amp_context(config, device):
        outputs = model(images, *extras)
    return method.eval_heads(model, outputs)


@paddle.no_grad()
def evaluate(model, method, loader, config, device="cpu", heads_fn=None, per_class=False, progress=None):
    """Exact top-1 / top-k counts summed over ranks: each sample is counted once, whatever the world size.
    `heads_fn(images, extras) -> {head: logits}` replaces the dygraph forward (e.g. an exported predictor).

    per_class=True returns (metrics, `common.report.ClassCounts`): the main head's images and top-1 hits per class
    and its [true, predicted] confusion matrix, summed over ranks in the same all-reduce as the other counts (every
    rank must pass the same value). `progress` (`common.report.Progress`, usually rank 0's only) is told the size of
    every batch and the exact total at the end.

    Rows with label -1 (an unreadable image replaced under DATA.SKIP_BAD_IMAGES) are not scored; their number is
    reported as 'skipped'. Any non-finite logit (NaN / inf weights, an overflow) stops evaluation on every rank with
    NonFiniteLossError: top-k of NaN is arbitrary and must never be counted as a prediction."""
    model.eval()
    num_classes = config.MODEL.NUM_CLASSES
    ks = sorted({min(int(k), num_classes) for k in config.EVAL.TOPK}) or [min(5, num_classes)]
    width = 3 + len(ks)  # per head: top-1 hits, loss sum, non-finite rows, then hits within each top-k
    counts, names = None, None
    total, skipped = 0, 0
    classes = None
    main = method.main_head_of(model)
    if per_class:
        from common.report import ClassCounts
        classes = ClassCounts(num_classes)
    for batch in loader:
        images, labels, extras = split_batch(batch)
        if progress is not None:
            progress.step(int(labels.shape[0]))
        heads = heads_fn(images, extras) if heads_fn is not None else dygraph_heads(model, method, images, extras,
                                                                                     config, device)
        if names is None:
            names = list(heads)
            counts = np.zeros((len(names), width), dtype="float64")
        keep = labels >= 0
        n_keep = int(keep.astype("int64").sum())
        skipped += int(labels.shape[0]) - n_keep
        if n_keep < int(labels.shape[0]):
            index = paddle.nonzero(keep).reshape([-1])
            labels = paddle.gather(labels, index)
            heads = {k: paddle.gather(v, index) for k, v in heads.items()}
        if n_keep == 0:
            continue
        for i, name in enumerate(names):
            logits = heads[name].astype("float32")
            finite = _finite_rows(logits)
            bad = n_keep - int(finite.astype("int64").sum())
            counts[i, 2] += bad
            if bad:
                continue  # this run stops after the all-reduce below; nothing of it is scored
            top = paddle.topk(logits, max(ks), axis=1)[1]
            hit = (top == labels.unsqueeze(1)).astype("float64")
            counts[i, 0] += float(hit[:, 0].sum())
            counts[i, 1] += float(eval_loss_sum(logits, labels))
            for j, k in enumerate(ks):
                counts[i, 3 + j] += float(hit[:, :k].sum())
            if classes is not None and name == (main if main in names else names[0]):
                classes.add(labels.numpy(), top[:, 0].numpy())
        total += n_keep
    # A rank with no samples (val set smaller than the world) does not know the model's head names; take them from
    # a rank that does, so every rank sums a vector of the same layout.
    known = [n for n in dist.all_gather_object(names) if n is not None]
    names = known[0] if known else [main]
    if counts is None:
        counts = np.zeros((len(names), width), dtype="float64")
    class_vec = classes.vector() if classes is not None else np.zeros(0)
    summed = dist.all_reduce_sum(np.concatenate([counts.reshape(-1), class_vec, [total, skipped]]))
    n, n_skipped = summed[-2], int(summed[-1])
    per_head = summed[:len(names) * width].reshape(len(names), width)
    nonfinite = {name: int(row[2]) for name, row in zip(names, per_head) if row[2] > 0}
    if nonfinite:
        what = ", ".join(f"head '{h}': {c} of {int(n)} images" for h, c in nonfinite.items())
        raise NonFiniteLossError(f"evaluation: non-finite logits ({what}); the model's weights hold NaN / inf or "
                                 f"its activations overflow, so no accuracy is reported")
    metrics = {"count": int(n)}
    if n_skipped:
        metrics["skipped"] = n_skipped
    for name, row in zip(names, per_head):
        prefix = "" if name == main else f"{name}/"
        metrics[f"{prefix}top1"] = 100.0 * row[0] / max(n, 1)
        for j, k in enumerate(ks):
            metrics[f"{prefix}top{k}"] = 100.0 * row[3 + j] / max(n, 1)
        metrics[f"{prefix}loss"] = row[1] / max(n, 1)
        metrics[f"{prefix}correct"] = int(row[0])
    if progress is not None:
        progress.end(int(n) + n_skipped)
    if classes is not None:   # ClassCounts was imported above, with per_class
        return metrics, ClassCounts.from_vector(num_classes, summed[len(names) * width:-2])
    return metrics


# ----------------------------------------------------------------------------------------------------------- train
def output_tensors(outputs, prefix="logits"):
    """[(name, tensor)] for every floating tensor in a model's outputs (a tensor, or nested dicts / lists)."""
    if isinstance(outputs, paddle.Tensor):
        return [(prefix, outputs)] if outputs.dtype in (paddle.float16, paddle.bfloat16, paddle.float32,
                                                        paddle.float64) else []
    if isinstance(outputs, dict):
        return [item for k, v in outputs.items() for item in output_tensors(v, f"output '{k}'")]
    if isinstance(outputs, (list, tuple)):
        return [item for i, v in enumerate(outputs) for item in output_tensors(v, f"{prefix}[{i}]")]
    return []


class Trainer:
    def __init__(self, config, method, model, out_dir, logger, device):
        self.config = config
        self.method = method
        self.model = model              # the bare model (EMA, checkpoints, parameter names)
        self.out_dir = out_dir
        self.log = logger.info
        self.device = device
        self.world = dist.world_size()
        self.rank = dist.rank()
        self.start_epoch = 1
        self.best = {"top1": -1.0, "epoch": 0}
        self.global_step = 0
        self.nonfinite_streak = 0
        self.history = []
        self.saved_epochs = []          # numbered checkpoints this run wrote (the only ones pruning may remove)
        self.class_names = None         # in label order when known (classes.txt, class folders): in 'meta'

    # ----- setup
    def setup(self, train_set, val_set):
        cfg = self.config
        self.train_set = train_set
        self.train_sampler = TrainBatchSampler(len(train_set), cfg.DATA.BATCH_SIZE, self.rank, self.world,
                                               seed=cfg.SEED)
        self.train_loader = build_loader(train_set, self.train_sampler, cfg.DATA.NUM_WORKERS, cfg.DATA.SHARED_MEMORY)
        self.val_loader = build_eval_loader(cfg, val_set) if val_set is not None else None
        accum = cfg.TRAIN.ACCUM_ITER
        self.batches_per_epoch = len(self.train_sampler)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accum)
        total_batch = cfg.DATA.BATCH_SIZE * accum * self.world
        self.scheduler = build_scheduler(cfg, self.steps_per_epoch, total_batch)
        amp_o2 = cfg.AMP.ENABLE and cfg.AMP.LEVEL == "O2"
        self.optimizer = build_optimizer(cfg, self.model, self.scheduler, self.method.lr_mult_fn(cfg, self.model),
                                         multi_precision=amp_o2)
        if amp_o2:
            self.model, self.optimizer = paddle.amp.decorate(models=self.model, optimizers=self.optimizer,
                                                             level="O2", dtype=cfg.AMP.DTYPE, save_dtype="float32")
        self.scaler = None
        if cfg.AMP.ENABLE and cfg.AMP.DTYPE == "float16":
            self.scaler = paddle.amp.GradScaler(init_loss_scaling=cfg.AMP.INIT_SCALE)
        if cfg.AMP.ENABLE and self.device == "cpu":
            self.log("AMP on CPU: Paddle keeps these ops in float32 here; the flag is accepted and has no effect")
        self.ema = ModelEma(self.model, cfg.EMA.DECAY) if cfg.EMA.ENABLE else None
        self.mixup = self._build_mixup()
        self.criterion = ClassificationLoss(cfg.MODEL.NUM_CLASSES, cfg.TRAIN.SMOOTHING, cfg.TRAIN.SMOOTHING_MODE)
        self.ddp = self._data_parallel()
        self.log(f"training {len(train_set)} images, {self.batches_per_epoch} batches of {cfg.DATA.BATCH_SIZE} per "
                 f"process x {self.world} process(es), accumulation {accum}: {self.steps_per_epoch} optimizer "
                 f"steps per epoch; base lr {self.scheduler.base:.3g} for total batch {total_batch}")

    def _data_parallel(self):
        """DataParallel over the processes (None for one): MODEL.SYNC_BN and DIST.FIND_UNUSED_PARAMETERS applied."""
        from common.method import find_unused_parameters
        cfg = self.config
        find_unused = find_unused_parameters(cfg, self.method)   # validated on every run, used with several processes
        if self.world == 1:
            return None
        if cfg.MODEL.SYNC_BN:
            if self.device.startswith("gpu"):
                converted, kept = self.method.sync_batchnorm(self.model)
                self.log(f"MODEL.SYNC_BN: {len(converted)} BatchNorm layers synchronised over {self.world} processes"
                         + (f"; kept per-process (own forward): {', '.join(kept)}" if kept else ""))
            else:
                # Paddle registers sync_batch_norm kernels for GPUs only (the CPU build has none)
                self.log("MODEL.SYNC_BN: Paddle has no SyncBatchNorm on CPU; each process keeps its own BatchNorm "
                         "statistics")
        if find_unused:
            self.log("DataParallel(find_unused_parameters=True): "
                     + ("DIST.FIND_UNUSED_PARAMETERS True" if cfg.DIST.FIND_UNUSED_PARAMETERS is True else
                        "this configuration leaves parameters without gradients"))
        return paddle.DataParallel(self.model, find_unused_parameters=find_unused)

    def _build_mixup(self):
        a = self.config.AUG
        if a.MIXUP_PROB <= 0 or (a.MIXUP_ALPHA <= 0 and a.CUTMIX_ALPHA <= 0):
            return None
        from common.data.mixup import Mixup
        return Mixup(mixup_alpha=a.MIXUP_ALPHA, cutmix_alpha=a.CUTMIX_ALPHA,
                     cutmix_minmax=list(a.CUTMIX_MINMAX) or None, prob=a.MIXUP_PROB, switch_prob=a.MIXUP_SWITCH_PROB,
                     mode=a.MIXUP_MODE, label_smoothing=self.config.TRAIN.SMOOTHING,
                     num_classes=self.config.MODEL.NUM_CLASSES, smoothing_mode=self.config.TRAIN.SMOOTHING_MODE)

    # ----- checkpoints (common/checkpoint.py writes, prunes and restores them)
    def checkpoint_state(self, epoch):
        run = {"global_step": self.global_step, "best": self.best, "history": self.history,
               "saved_epochs": self.saved_epochs, "world_size": self.world}
        meta = checkpoint_meta(getattr(self.method, "name", None) or self.config.MODEL.get("METHOD", ""),
                               self.config, self.class_names)
        return training_state(epoch, self.model, self.optimizer, self.scheduler, self.scaler, self.ema, run,
                              self.config, meta)

    def save(self, epoch, is_best):
        if self.rank != 0:
            return
        cfg = self.config.SAVE
        numbered = cfg.FREQ > 0 and (epoch % cfg.FREQ == 0 or epoch == self.config.TRAIN.EPOCHS)
        if numbered:
            self.saved_epochs.append(epoch)
        self.saved_epochs = save_training_checkpoint(self.out_dir, self.checkpoint_state(epoch), numbered, is_best,
                                                     cfg.KEEP)

    def last_metrics(self):
        """The newest validation metrics in the history (a finished run that is resumed has nothing to train)."""
        for record in reversed(self.history):
            vals = {k[4:]: v for k, v in record.items() if k.startswith("val_") and not k.startswith("val_ema_")}
            if vals:
                return vals
        return {}

    def resume(self, path):
        """Restore a training checkpoint (`common.checkpoint.restore_training_checkpoint`: checked before anything
        changes) and continue after its epoch."""
        run = restore_training_checkpoint(path, self.model, self.optimizer, self.scheduler, self.scaler, self.ema,
                                          self.config, self.world, self.log)
        if self.ema is not None and not run["ema_restored"]:
            self.ema = ModelEma(self.model, self.config.EMA.DECAY)
        self.start_epoch = run["epoch"] + 1
        self.global_step = run["global_step"]
        self.best = dict(run["best"] or self.best)
        self.history = run["history"]
        self.saved_epochs = run["saved_epochs"]

    # ----- loops
    def _seed_epoch(self, epoch):
        # randomness is a function of (seed, epoch, rank), so a resumed run continues exactly as an uninterrupted one
        seed = self.config.SEED
        paddle.seed((seed * 100_003 + epoch * 1_009 + self.rank) % (2 ** 31))
        self.train_sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        return np.random.default_rng([seed, epoch, self.rank])

    def _check_finite(self, loss, outputs, epoch, it):
        """The loss and every output tensor finite, decided the same on every rank (one host sync). A non-finite
        loss or output skips the step; MAX_NONFINITE in a row stop the run naming what was non-finite. The outputs
        are checked too because Paddle's CPU cross-entropy turns all-NaN logits into a finite ln(C)."""
        named = [("loss", loss)] + output_tensors(outputs)
        flags = paddle.stack([paddle.logical_not(paddle.isfinite(t.astype("float32")).all()) for _, t in named])
        bad = dist.all_reduce_max(flags.astype("float64").numpy())  # every rank takes the same decision
        if not bad.any():
            return True
        what = ", ".join(name for (name, _), b in zip(named, bad) if b > 0)
        self.nonfinite_streak += 1
        limit = self.config.TRAIN.MAX_NONFINITE
        self.log(f"epoch {epoch} iter {it}: non-finite {what} ({self.nonfinite_streak} in a row); step skipped")
        if self.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"non-finite {self.nonfinite_streak} times in a row ({what}; epoch {epoch}, iteration {it}); "
                f"stopping. Lower TRAIN.BASE_LR, set TRAIN.GRAD_CLIP, or check the data and the starting weights. "
                f"The last good checkpoint is in {self.out_dir}")
        return False

    def _micro_step(self, model, batch, rng, epoch, it, sync_grads):
        """Forward, loss and backward of one micro-batch, its gradients added to the window's (synchronised over
        the processes only when `sync_grads`, at the window's end). Returns (loss, {term: value}, images, finite):
        a non-finite loss or output adds no gradient, except under fp16 loss scaling, where the scaler must see
        the inf / nan gradients to skip the step and lower the scale."""
        images, labels, extras = split_batch(batch)
        targets = labels
        if self.mixup is not None:
            images, targets, extras = self.mixup(images, labels, rng, extras)
        sync = contextlib.nullcontext() if (self.ddp is None or sync_grads) else self.ddp.no_sync()
        with sync:
            with amp_context(self.config, self.device):
                outputs = model(images, *extras)
            loss, terms = self.method.loss(self.criterion, outputs, targets, self.model)
            finite = self._check_finite(loss, outputs, epoch, it)
            if finite or self.scaler is not None:
                scaled = loss / self.config.TRAIN.ACCUM_ITER
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss, terms, int(images.shape[0]), finite

    def _optimizer_step(self, skip, finite):
        """The end of an accumulation window: the optimizer step (gradient clipping is the optimizer's, fp16 goes
        through the loss scaler), zeroed gradients and the EMA update; with `skip` (a non-finite micro-batch
        without a loss scaler) the window's gradients are only dropped. The LR schedule advances either way.
        Returns the learning rate of this step."""
        if skip:
            self.optimizer.clear_grad(set_to_zero=False)
        else:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.clear_grad(set_to_zero=False)
            if finite:
                self.nonfinite_streak = 0
            if self.ema is not None:
                self.ema.update(self.model)
        lr = self.optimizer.get_lr()
        self.scheduler.step()
        self.global_step += 1
        return lr

    def train_one_epoch(self, epoch):
        cfg = self.config
        rng = self._seed_epoch(epoch)
        model = self.ddp or self.model
        model.train()
        accum = cfg.TRAIN.ACCUM_ITER
        n = self.batches_per_epoch
        loss_sum, loss_count, seen = 0.0, 0, 0
        term_sums = {}
        t_start = time.time()
        skip_window = False
        lr = self.optimizer.get_lr()
        for it, batch in enumerate(self.train_loader):
            window_end = (it + 1) % accum == 0 or it + 1 == n
            loss, terms, size, finite = self._micro_step(model, batch, rng, epoch, it, window_end)
            skip_window = skip_window or not (finite or self.scaler is not None)
            if finite:
                loss_sum += float(loss)
                loss_count += 1
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + float(v)
            seen += size
            if window_end:
                lr = self._optimizer_step(skip_window, finite)  # this epoch's last step's rate: history, curves
                skip_window = False
            if (it + 1) % cfg.REPORT_FREQ == 0 or it + 1 == n:
                self._report(epoch, it, n, t_start, seen, loss_sum / max(loss_count, 1),
                             {k: v / max(loss_count, 1) for k, v in term_sums.items()})
        elapsed = time.time() - t_start
        return {"train_loss": loss_sum / max(loss_count, 1),
                **{f"train_{k}": v / max(loss_count, 1) for k, v in term_sums.items()},
                "lr": lr, "epoch_time": elapsed, "images_per_s": seen * self.world / max(elapsed, 1e-9)}

    def _report(self, epoch, it, n, t_start, seen, avg_loss, terms):
        elapsed = time.time() - t_start
        per_iter = elapsed / (it + 1)
        remaining = (n - it - 1) + (self.config.TRAIN.EPOCHS - epoch) * n
        eta = int(per_iter * remaining)
        ips = seen * self.world / max(elapsed, 1e-9)
        lr = self.optimizer.get_lr()
        extra = "".join(f" {k} {v:.4f}" for k, v in terms.items())
        self.log(f"epoch {epoch}/{self.config.TRAIN.EPOCHS} iter {it + 1}/{n} loss {avg_loss:.4f}{extra} "
                 f"lr {lr:.3e} {ips:.1f} img/s eta {eta // 3600:d}:{eta % 3600 // 60:02d}:{eta % 60:02d}")
        self.writer.add("train/loss", avg_loss, self.global_step)
        self.writer.add("train/lr", lr, self.global_step)
        self.writer.add("train/images_per_s", ips, self.global_step)

    def _share_rank0_statistics(self):
        """Each rank's BatchNorm running statistics (and the EMA's copy of them) drift apart under DataParallel, which
        synchronises gradients only. Before validation every rank takes rank 0's, which the checkpoint holds, so the
        validation of a multi-process run equals re-evaluating the saved checkpoint."""
        if self.world == 1:
            return
        # Paddle keeps BatchNorm statistics as parameters that take no gradient, other layers may keep buffers
        state = [p for p in self.model.parameters() if p.stop_gradient] + list(self.model.buffers())
        dist.broadcast_from_rank0([t for t in state if paddle.is_floating_point(t)])
        if self.ema is not None:
            dist.broadcast_from_rank0([v for v in self.ema.state.values() if paddle.is_floating_point(v)])

    def fit(self, writer):
        cfg = self.config
        self.writer = writer
        last_metrics = {}
        for epoch in range(self.start_epoch, cfg.TRAIN.EPOCHS + 1):
            t_epoch = time.time()
            stats = self.train_one_epoch(epoch)
            record = {"epoch": epoch, **stats}
            is_best = False
            if self.val_loader is not None and (epoch % cfg.EVAL.FREQ == 0 or epoch == cfg.TRAIN.EPOCHS):
                self._share_rank0_statistics()
                metrics = evaluate(self.model, self.method, self.val_loader, cfg, self.device)
                record.update({f"val_{k}": v for k, v in metrics.items()})
                self.log(self._format_metrics(f"epoch {epoch} val", metrics))
                if self.ema is not None:
                    with self.ema.swapped_into(self.model):
                        ema_metrics = evaluate(self.model, self.method, self.val_loader, cfg, self.device)
                    record.update({f"val_ema_{k}": v for k, v in ema_metrics.items()})
                    self.log(self._format_metrics(f"epoch {epoch} val (EMA)", ema_metrics))
                if metrics["top1"] > self.best["top1"]:
                    self.best = {"top1": metrics["top1"], "epoch": epoch}
                    is_best = True
                for k in metrics:  # the main head's top-1, every configured top-k, and the loss
                    if k == "loss" or (k.startswith("top") and "/" not in k):
                        writer.add(f"val/{k}", metrics[k], epoch)
                last_metrics = metrics
            writer.add("train/epoch_loss", stats["train_loss"], epoch)
            record["wall_time"] = time.time() - t_epoch   # training + validation of this epoch
            self.history.append(record)
            self.save(epoch, is_best)
            if self.rank == 0:
                self._write_metrics()
        if last_metrics:
            self.log(self._format_metrics(f"final (epoch {cfg.TRAIN.EPOCHS})", last_metrics) +
                     f"; best top1 {self.best['top1']:.2f} at epoch {self.best['epoch']}")
        self.write_run_report()
        return last_metrics

    def _write_metrics(self):
        from common.report import METRICS_CSV, metrics_csv_text
        atomic_write_text(os.path.join(self.out_dir, "metrics.json"),
                          json.dumps({"history": self.history, "best": self.best}, indent=1))
        atomic_write_text(os.path.join(self.out_dir, METRICS_CSV), metrics_csv_text(self.history))

    def write_run_report(self):
        """Rank 0, at the end of a run (also of one resumed after it finished): the summary table in the log,
        metrics.csv and training_curves.png in the output folder."""
        if self.rank != 0 or not self.history:
            return
        from common.report import CURVES_PNG, METRICS_CSV, metrics_csv_text, plot_training_curves, training_summary
        atomic_write_text(os.path.join(self.out_dir, METRICS_CSV), metrics_csv_text(self.history))
        self.log(training_summary(self.history, self.config.TRAIN.EPOCHS, self.method.main_head_of(self.model),
                                  self.out_dir))
        plot_training_curves(self.history, os.path.join(self.out_dir, CURVES_PNG),
                             f"{self.method.name} {self.config.MODEL.NAME}: {os.path.basename(self.out_dir)}")
        self.log(f"wrote {os.path.join(self.out_dir, 'metrics.csv')} and {os.path.join(self.out_dir, CURVES_PNG)}")

    @staticmethod
    def _format_metrics(prefix, m):
        main = " ".join(f"{k} {m[k]:.2f}" if isinstance(m[k], float) else f"{k} {m[k]}"
                        for k in m if "/" not in k)
        heads = sorted({k.split("/")[0] for k in m if "/" in k})
        extra = "".join(f" | {h}: top1 {m[h + '/top1']:.2f}" for h in heads)
        return f"{prefix}: {main}{extra}"
