"""Per-run logging: every rank writes `log_rank{r}.txt`; rank 0 also prints and writes `log.txt`.
Scalars go to VisualDL (rank 0) when it is installed and enabled.

One suite logger ("suite") holds the run's handlers. A module logs through `get_logger(__name__)`, a child of it,
so its lines reach the run's files and console without anyone attaching handlers to it; before a run is set up
(a library call, a test) they propagate to Python's root logger as usual."""
import logging
import os
import sys

SUITE = "suite"


def get_logger(name):
    """The logger of module `name`: a child of the suite logger."""
    return logging.getLogger(f"{SUITE}.{name}")


def setup_logger(out_dir, rank):
    """Point the suite logger at this run's files (and rank 0's console); returns it. A second run in the same
    process takes the handlers over (the previous ones are closed)."""
    logger = logging.getLogger(SUITE)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%m-%d %H:%M:%S")
    os.makedirs(out_dir, exist_ok=True)
    handlers = [logging.FileHandler(os.path.join(out_dir, f"log_rank{rank}.txt"))]
    if rank == 0:
        handlers += [logging.FileHandler(os.path.join(out_dir, "log.txt")), logging.StreamHandler(sys.stdout)]
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


class ScalarWriter:
    """VisualDL scalars on rank 0; a no-op elsewhere or when VisualDL is missing/disabled."""

    def __init__(self, logdir, enabled):
        self._writer = None
        if enabled:
            try:
                from visualdl import LogWriter
                self._writer = LogWriter(logdir=logdir)
            except Exception:  # visualdl is optional at run time
                self._writer = None

    def add(self, tag, value, step):
        if self._writer is not None:
            self._writer.add_scalar(tag=tag, value=float(value), step=int(step))

    def close(self):
        if self._writer is not None:
            self._writer.close()
