"""The suite's data loader: batches of paddle Tensors from a map-style data set and a batch sampler, where a bad
sample ends the run at once with the suite's own error, and no data worker outlives the run.

* `num_workers == 0`: a plain synchronous loop in the calling thread (sampler -> samples -> numpy collate ->
  Tensors). There is no reader thread that could die and leave the main thread waiting forever, and a signal is
  handled between two samples.
* `num_workers > 0`: Paddle's multi-process `paddle.io.DataLoader` (shared memory, prefetching), wrapped:
  - every sample is read through a guard in the worker: an exception is caught there and travels to the main
    process as data (a `_Failure` in the batch) instead of killing Paddle's reader thread; the main process then
    stops the workers and raises it, so the user sees the suite's one `error:` line naming the image and its list
    line, not two nested tracebacks and "Blocking queue is killed";
  - every worker asks the kernel to kill it when the process that started it dies (`die_with_parent`), so a
    SIGKILLed trainer leaves no worker behind; workers ignore SIGINT and SIGTERM (Ctrl-C or a service manager
    signals the whole process group): the main process stops them;
  - workers are shut down (told, then given a second, then killed) when iteration ends early: an error, a signal
    (`common.errors.Interrupted`), or the interpreter exiting with an iterator still open.

Exceptions from a sample: a `SuiteError` (e.g. `DataError`, whose message names the file and list line) is raised
as it is; any other exception becomes a `SampleError` naming the image and its list line, with the original
exception (and, from a worker, its traceback) as its cause (shown with SUITE_TRACEBACK=1).

Batches have the structure and values of Paddle's default collation: a list with one Tensor per field of the
samples (images [N, C, H, W], labels [N], extra fields stacked), numbers as int64 / float64 arrays, strings as
lists.
"""
import atexit
import gc
import multiprocessing.util  # noqa: F401 - its exit hook is registered before ours, so ours runs first
import numbers
import os
import pickle
import signal
import threading
import traceback
import weakref
from collections.abc import Mapping, Sequence

import numpy as np
import paddle

from common.errors import SuiteError
from common.proctree import die_with_parent

__all__ = ["SampleError", "DataWorkerError", "SuiteLoader", "build_loader", "collate", "read_sample",
           "describe_sample"]

WORKER_JOIN_S = 1.0   # how long a worker has to exit when told to, before it is killed


class SampleError(SuiteError):
    """An unexpected exception while reading one sample (not a DataError): names the image and its list line."""


class DataWorkerError(SuiteError):
    """A data worker process ended without a result (killed, e.g. by the out-of-memory killer, or crashed)."""
    exit_code = 1


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a data worker, attached as the cause of the re-raised error."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


# ------------------------------------------------------------------------------------------------ samples
def describe_sample(dataset, index):
    """'image PATH (listed at FILE:LINE)' for an ImageDataset sample, else 'sample INDEX'."""
    try:
        sample = dataset.samples[index]
        path = sample.path
    except Exception:  # not an ImageDataset, or an index it does not have
        return f"sample {index}"
    origin = getattr(sample, "origin", "")
    where = f" (listed at {origin})" if origin and origin != os.path.dirname(path) else ""
    return f"image {path}{where}"


def read_sample(dataset, index):
    """dataset[index]; a SuiteError passes as it is, any other exception becomes a SampleError naming the sample."""
    try:
        return dataset[index]
    except SuiteError:
        raise
    except Exception as e:  # noqa: B902 - any failure of one sample is reported with the sample named
        msg = str(e).strip() or "(no message)"
        raise SampleError(f"reading {describe_sample(dataset, index)} failed: {type(e).__name__}: {msg}") from e


def collate(samples):
    """Paddle's default collation, in numpy: arrays stacked, numbers into an array, strings kept as a list, and
    tuples / lists / dicts of those field by field."""
    first = samples[0]
    if isinstance(first, np.ndarray):
        return np.stack(samples, axis=0)
    if isinstance(first, paddle.Tensor):
        return paddle.stack(samples, axis=0)
    if isinstance(first, numbers.Number):
        return np.array(samples)
    if isinstance(first, (str, bytes)):
        return list(samples)
    if isinstance(first, Mapping):
        return {key: collate([s[key] for s in samples]) for key in first}
    if isinstance(first, Sequence):
        width = len(first)
        if any(len(s) != width for s in samples):
            raise ValueError("the samples of a batch have different numbers of fields")
        return [collate(list(field)) for field in zip(*samples)]
    raise TypeError(f"a sample field of type {type(first).__name__} cannot be batched (arrays, numbers, strings, "
                    f"lists and dicts can)")


def collate_batch(samples):
    """`collate`, with a failure (e.g. images of different sizes in one batch) reported as a SampleError."""
    try:
        return collate(samples)
    except Exception as e:  # noqa: B902
        raise SampleError(f"cannot make a batch of {len(samples)} samples: {type(e).__name__}: {e} (every sample "
                          f"must have the same fields, and arrays of the same shape)") from e


def to_tensors(batch):
    """numpy arrays (also inside lists / dicts) -> paddle Tensors on the current device."""
    if isinstance(batch, np.ndarray):
        return paddle.to_tensor(batch)
    if isinstance(batch, Mapping):
        return {k: to_tensors(v) for k, v in batch.items()}
    if isinstance(batch, list) and batch and not isinstance(batch[0], (str, bytes)):
        return [to_tensors(v) for v in batch]
    return batch


# ------------------------------------------------------------------------------------------------ failures
class _Failure:
    """A sample's exception, carried from a worker to the main process inside the batch."""

    def __init__(self, error, remote_traceback):
        self.error = error
        self.remote_traceback = remote_traceback

    @classmethod
    def capture(cls, err):
        """A SuiteError raised in a worker -> _Failure (the exception must survive pickling to cross the queue)."""
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:  # noqa: B902 - a type that does not pickle: keep its message and exit code
            plain = SampleError(str(err))
            plain.exit_code = getattr(err, "exit_code", SampleError.exit_code)
            err = plain
        err.__cause__ = None
        err.__traceback__ = None
        return cls(err, text)

    def raise_it(self):
        err = self.error
        raise err from RemoteTraceback(f"in a data worker:\n{self.remote_traceback}")


class _GuardedDataset:
    """The data set as the workers see it: a failing sample becomes a `_Failure` instead of an exception."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return read_sample(self.dataset, index)
        except SuiteError as e:  # read_sample turns any other exception into a SampleError
            return _Failure.capture(e)


_FAILURE_PAD = np.zeros([1], dtype="uint8")   # a batch carries at least one array through Paddle's queue


def _collate_in_worker(samples):
    for s in samples:
        if isinstance(s, _Failure):
            return [_FAILURE_PAD, s]
    try:
        return collate_batch(samples)
    except SuiteError as e:
        return [_FAILURE_PAD, _Failure.capture(e)]


def _failure_in(batch):
    if isinstance(batch, list) and len(batch) == 2 and isinstance(batch[1], _Failure):
        return batch[1]
    return None


# ------------------------------------------------------------------------------------------------ workers
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _init_worker(parent_pid, worker_id):
    """In each worker: die with the main process, and ignore SIGINT / SIGTERM. The main process owns its workers'
    lifetime: a signal to the whole process group (Ctrl-C, a service manager, the launcher's stop_tree) stops the
    main process, which tells its workers to exit and kills those that do not; if it dies, the kernel kills them.
    A worker that left on its own would race the main process, which may still be reading a batch that worker
    holds in shared memory (and Paddle's reader thread then fails or waits). The worker was forked with SIGINT and
    SIGTERM blocked (`_start_workers`); they are unblocked once ignored."""
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent_pid:     # the main process died before the request took effect
        os._exit(0)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


class _WorkerInit:
    def __init__(self, parent_pid):
        self.parent_pid = parent_pid

    def __call__(self, worker_id):
        _init_worker(self.parent_pid, worker_id)


_open_iterators = weakref.WeakSet()


def _shutdown(it):
    """Stop a Paddle multi-process iterator: its reader thread, then its workers (told to exit, joined for
    WORKER_JOIN_S each, killed if still there)."""
    try:
        it._shutdown_on_exit()
    except Exception:  # noqa: B902 - best effort; the workers are killed below anyway
        pass
    try:
        if getattr(it, "_reader", None) is not None:
            it._reader.shutdown()   # its prefetch threads (Paddle does this only when an epoch ends)
    except Exception:  # noqa: B902
        pass
    for w in list(getattr(it, "_workers", None) or []):
        try:
            if w.is_alive():
                w.kill()
                w.join(WORKER_JOIN_S)
        except Exception:  # noqa: B902
            pass
    _open_iterators.discard(it)


@atexit.register
def _shutdown_open_iterators():
    """At exit (e.g. after an error or a signal left an epoch's iterator open): no worker outlives the process."""
    for it in list(_open_iterators):
        _shutdown(it)


_QUEUE_KILLED = "Blocking queue is killed"


class SuiteLoader:
    """`for batch in SuiteLoader(dataset, batch_sampler, num_workers)`: a list of Tensors per batch (see module)."""

    def __init__(self, dataset, batch_sampler, num_workers=0, shared_memory=True):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.num_workers = max(int(num_workers), 0)
        self.shared_memory = bool(shared_memory)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        if self.num_workers == 0:
            return self._iter_in_process()
        return self._iter_with_workers()

    def _iter_in_process(self):
        for indices in self.batch_sampler:
            samples = [read_sample(self.dataset, i) for i in indices]
            yield to_tensors(collate_batch(samples))

    def _paddle_loader(self):
        return paddle.io.DataLoader(_GuardedDataset(self.dataset), batch_sampler=self.batch_sampler,
                                    num_workers=self.num_workers, use_shared_memory=self.shared_memory,
                                    collate_fn=_collate_in_worker, worker_init_fn=_WorkerInit(os.getpid()))

    def _start_workers(self):
        """Paddle's iterator (which forks the workers), registered for shutdown. SIGINT / SIGTERM are blocked
        meanwhile: Python runs a handler that arrives during fork() inside an at-fork hook, where the
        `Interrupted` it raises would be printed and lost (and the run would go on); blocked, the signal is
        delivered when the iterator is registered, and forked workers start with it blocked until their own
        handlers are set.

        The garbage collector's objects are frozen meanwhile, so that a worker never collects the parent's
        garbage: a finished iterator waiting for collection owns Paddle queues whose condition variables had
        waiters (threads of the parent, absent in the child); destroying one in a worker blocks that worker forever
        (and with it the run)."""
        in_main = threading.current_thread() is threading.main_thread()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if in_main else None
        gc.freeze()
        try:
            it = iter(self._paddle_loader())
            _open_iterators.add(it)
        finally:
            gc.unfreeze()
            if in_main:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return it

    def _iter_with_workers(self):
        it = self._start_workers()
        try:
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except SystemError as e:
                    if _QUEUE_KILLED not in str(e):
                        raise
                    raise DataWorkerError(
                        "a data worker process ended without delivering its batch (killed, e.g. by the "
                        "out-of-memory killer, or crashed); lower DATA.NUM_WORKERS or DATA.BATCH_SIZE, or set "
                        "DATA.NUM_WORKERS 0 to read the data in the main process and see the error") from None
                failure = _failure_in(batch)
                if failure is not None:
                    _shutdown(it)
                    failure.raise_it()
                yield batch
        finally:
            _shutdown(it)


def build_loader(dataset, batch_sampler, num_workers, shared_memory=True):
    return SuiteLoader(dataset, batch_sampler, num_workers, shared_memory)


SHM_FOLDER = "/dev/shm"
SHM_MIN_FREE = 256 * 2 ** 20


def shared_memory_warning(num_workers, shared_memory, folder=SHM_FOLDER, min_free=SHM_MIN_FREE):
    """A message when data workers will pass batches through a /dev/shm too small for them (a container's default
    is 64 MB: workers then die with a bus error), else ''."""
    if num_workers <= 0 or not shared_memory or not os.path.isdir(folder):
        return ""
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    if free >= min_free:
        return ""
    return (f"{folder} has only {free / 2 ** 20:.0f} MB free; data workers pass their batches through it and may die "
            f"with a bus error. Give the container more (e.g. docker run --shm-size 8g) or set "
            f"DATA.SHARED_MEMORY False (slower), or DATA.NUM_WORKERS 0")
