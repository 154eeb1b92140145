"""The output folder of a run: durable atomic writes, one run per folder, never over a finished run.

* `atomic_write` writes through a temporary file in the same folder, flushes it to disk (file, then folder) and
  renames it: a crash, a kill or a full disk leaves either the old file or the new one, never a partial one.
* `claim_output` (rank 0, before any work): the folder is writable (checked by writing, not by permission bits),
  not in use by a live run (an advisory lock the kernel drops when the process dies, so a crashed run never leaves it
  locked), and holds no earlier run unless the user resumes it or asks to start over, in which case the earlier
  run's files are moved aside into `previous_run_<N>/`, not deleted. Temporary files of a killed save are removed.
"""
import fcntl
import os
import shlex
import sys

from common.errors import OutputError, RunExistsError, os_error_reason

TMP_MARK = ".tmp"
LOCK_FILE = ".run.lock"
# what marks a folder as holding a run, and what a new run moves aside when starting over
RUN_MARKERS = ("last.pdparams", "metrics.json")


def tmp_path_for(path):
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}{TMP_MARK}{os.getpid()}")


def fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write_to):
    """`write_to(tmp_path)` writes the content; then fsync, rename over `path`, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        write_to(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(folder)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {os_error_reason(e)}; the previous version of the file (if any) is "
                          f"intact") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def user_command():
    """The command line the user typed (the launcher passes its own through SUITE_COMMAND)."""
    if os.environ.get("SUITE_COMMAND"):
        return os.environ["SUITE_COMMAND"]
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)


def check_writable(folder):
    """Create the folder and write a probe file in it: a read-only or full disk is found before the first epoch."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write_test{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {folder}: {os_error_reason(e)}") from None


def check_output_file(path, what="output"):
    """The folder of an output file (CSV, PNG, .npy) is writable: checked before the work, not after it."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{what} {path} is a folder; give a file name")
    check_writable(folder)


def lock_output(folder):
    """One run per output folder: an exclusive advisory lock held until the process exits (the descriptor is never
    closed; the kernel releases the lock when the process ends, however it ends)."""
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        who = f" (process {holder})" if holder else ""
        raise RunExistsError(f"the output folder {folder} is in use by another run{who}; wait for it to end or "
                             f"choose another -output") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def remove_stale_tmp(folder):
    """Temporary files left by a save that was killed (never a complete file: see atomic_write)."""
    removed = []
    for name in os.listdir(folder):
        if name.startswith(".") and TMP_MARK in name:
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def holds_run(folder):
    return [m for m in RUN_MARKERS if os.path.isfile(os.path.join(folder, m))]


def run_files(folder):
    """Everything an earlier run left in `folder` (checkpoints, logs, metrics, reports, eval/, launch logs), for
    moving aside: all but the lock and the earlier runs already moved aside."""
    return sorted(name for name in os.listdir(folder)
                  if name != LOCK_FILE and not name.startswith("previous_run_"))


def move_previous_run(folder):
    """Move an earlier run's files into `previous_run_<N>/` (the first free N); returns that folder."""
    n = 1
    while os.path.exists(os.path.join(folder, f"previous_run_{n}")):
        n += 1
    dest = os.path.join(folder, f"previous_run_{n}")
    os.makedirs(dest)
    for name in run_files(folder):
        os.replace(os.path.join(folder, name), os.path.join(dest, name))
    fsync_folder(folder)
    return dest


def claim_output(folder, training, resuming, start_over):
    """Rank 0, before any work. Raises OutputError / RunExistsError with the command that continues or starts
    over; returns a note for the log (or '')."""
    check_writable(folder)
    if not training:
        return ""
    lock_output(folder)
    notes = []
    stale = remove_stale_tmp(folder)
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) of an interrupted save: {', '.join(stale)}")
    markers = holds_run(folder)
    if markers and not resuming:
        if start_over:
            dest = move_previous_run(folder)
            notes.append(f"SAVE.START_OVER: the earlier run in {folder} was moved to {dest}")
        else:
            cmd = user_command()
            raise RunExistsError(
                f"the output folder {folder} already holds a run ({', '.join(markers)}); nothing was changed.\n"
                f"  to continue it:        {cmd} -resume auto\n"
                f"  to start over (the earlier run is moved to {folder}/previous_run_<N>/): "
                f"{cmd} -opts SAVE.START_OVER True\n"
                f"  or choose another -output")
    return "; ".join(notes)
