"""The suite's error boundary: every expected failure ends as one `error:` line and a documented exit code.

Exit codes (README, "Reliability"):
  0  success
  1  an unexpected internal error (a bug: please report it; SUITE_TRACEBACK=1 shows the traceback)
  2  bad input: a config key or value, a data file or list line, a checkpoint, a missing or unreadable path
  3  non-finite numbers: the loss, the logits or the weights became NaN / inf
  4  the output cannot be written: disk full, read-only folder, permission denied
  5  the output folder is in use by another run, or already holds a run (see the message for the command to use)
  128 + N  stopped by signal N (130: SIGINT / Ctrl-C, 143: SIGTERM)

Set SUITE_TRACEBACK=1 to see the Python traceback behind any error line.
"""
import errno
import os
import signal
import sys
import traceback

EXIT_INPUT = 2
EXIT_NONFINITE = 3
EXIT_WRITE = 4
EXIT_BUSY = 5


class SuiteError(Exception):
    """An expected failure with a message that names the file, key or line at fault."""
    exit_code = EXIT_INPUT


class NonFiniteError(SuiteError):
    exit_code = EXIT_NONFINITE


class OutputError(SuiteError):
    """The output cannot be written (disk full, read-only, permission)."""
    exit_code = EXIT_WRITE


class RunExistsError(SuiteError):
    """The output folder holds another run or is locked by a live one."""
    exit_code = EXIT_BUSY


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT (BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum

    def __str__(self):
        return f"stopped by {signal.Signals(self.signum).name}"


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}

# files (e.g. a run's log.txt) that receive the error line besides stderr; set by the runner
_error_sinks = []


def add_error_sink(write_line):
    _error_sinks.append(write_line)


def os_error_reason(e):
    """What went wrong, in words a user acts on (a full disk and a file-size limit said plainly)."""
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EFBIG:
        return "file too large for the file system or the process's file-size limit"
    return e.strerror or str(e)


def describe_os_error(e):
    """'path: reason' for an OSError, with the path the OS named."""
    where = e.filename if e.filename is not None else ""
    if getattr(e, "filename2", None):
        where = f"{where} -> {e.filename2}"
    reason = os_error_reason(e)
    return f"{where}: {reason}" if where else reason


def classify(exc):
    """(exit code, message) for an exception, or None when it is not an expected failure."""
    import pickle
    import yaml
    if isinstance(exc, Interrupted):
        return 128 + exc.signum, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT, "stopped by SIGINT"
    if isinstance(exc, SuiteError):
        return exc.exit_code, str(exc)
    if isinstance(exc, OSError):
        code = EXIT_WRITE if exc.errno in _WRITE_ERRNOS else EXIT_INPUT
        return code, describe_os_error(exc)
    if isinstance(exc, yaml.YAMLError):
        return EXIT_INPUT, f"config is not valid YAML: {' '.join(str(exc).split())}"
    if isinstance(exc, (pickle.UnpicklingError, UnicodeDecodeError)):
        return EXIT_INPUT, str(exc)
    if isinstance(exc, (ValueError, KeyError)) and _raised_by_suite(exc):
        return EXIT_INPUT, str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return None


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raised_by_suite(exc):
    """A ValueError / KeyError raised by the suite's own code carries a complete message; one raised deep inside a
    library is a bug or an unexpected state, reported as such."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is None:
        return False
    last = os.path.abspath(last)
    return last.startswith(_REPO + os.sep) and "site-packages" not in last


def report(exc):
    """Print the error line (and the traceback when asked for); returns the exit code."""
    known = classify(stopped_by_signal(exc) or exc)
    if known is None:
        code, msg = 1, (f"unexpected {type(exc).__name__}: {exc} (this is a bug; run with SUITE_TRACEBACK=1 "
                        f"for the traceback)")
    else:
        code, msg = known
    if os.environ.get("SUITE_TRACEBACK", "") not in ("", "0"):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    line = "error: " + msg.strip()
    print(line, file=sys.stderr, flush=True)
    for sink in list(_error_sinks):
        try:
            sink(line)
        except Exception:  # the log itself may be on the full disk
            pass
    return code


_received = []   # the signals this process was stopped by (the first one counts)


def _raise_interrupted(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def stopped_by_signal(exc):
    """The Interrupted a failure stands for, or None. A signal that lands while Paddle runs Python code of its own
    (a PyLayer's backward, called from the C++ autograd engine) reaches us re-raised as Paddle's error, its message
    holding ours: the signal is what stopped the run, and it is reported as such."""
    if isinstance(exc, Interrupted):
        return exc
    return Interrupted(_received[0]) if _received else None


def install_signal_handlers():
    """SIGTERM and SIGINT raise `Interrupted` in the main thread: `finally` blocks run (a checkpoint being written is
    either completed or its temporary file removed) and the boundary exits with 128 + signal."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_interrupted)


def ignore_signals():
    """While exiting: a second signal must not interrupt the clean-up."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass


def run_entry(fn, *args, exit_on_error=True, **kwargs):
    """Run a CLI entry point inside the boundary. On failure: the error line, then exit with the documented code
    (or, with exit_on_error=False, return that code: for entry points whose `main` returns a status)."""
    install_signal_handlers()
    try:
        return fn(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: B902 - the boundary: every failure becomes one line and an exit code
        ignore_signals()
        code = report(e)
        sys.stdout.flush()
        if exit_on_error:
            sys.exit(code)
        install_signal_handlers()
        return code
