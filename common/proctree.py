"""Process-tree helpers (Linux /proc): nothing a run started may outlive it.

Paddle's launcher starts every rank in a session of its own and each rank starts its data workers, so neither a
process group nor a session covers the whole run. The launcher therefore snapshots the tree of its child (by parent
pid, with each process's start time so a recycled pid is never signalled) and stops every member that is still
there; a rank or a data worker whose parent dies gets a signal from the kernel (`die_with_parent`).
"""
import ctypes
import os
import signal
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _stat(pid):
    """(parent pid, start time) of a live process (not a zombie), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (2nd field) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(root):
    """[(pid, start time)] of every live process below `root`."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children.setdefault(st[0], []).append((int(name), st[1]))
    out, todo = [], [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            out.append((pid, start))
            todo.append(pid)
    return out


def alive(pid, start):
    st = _stat(pid)
    return st is not None and st[1] == start


def signal_members(members, sig):
    for pid, start in members:
        if alive(pid, start):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def reap_children():
    """Collect exited children (orphans adopted by a subreaper become ours), so they do not stay zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_tree(members, grace=10.0):
    """SIGTERM every member still alive, SIGKILL what is left after `grace` seconds; returns what had to be killed."""
    signal_members(members, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(alive(p, s) for p, s in members):
        time.sleep(0.1)
    left = [(p, s) for p, s in members if alive(p, s)]
    signal_members(left, signal.SIGKILL)
    return left


def become_subreaper():
    """Orphaned descendants are re-parented to this process instead of init, so they can still be found (and
    stopped) after their own parent is gone. Linux only; returns whether it is in effect."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(sig=signal.SIGKILL):
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; a no-op elsewhere). Returns
    whether it is in effect. If the parent is already gone (reparented to init), act at once."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:
        os.kill(os.getpid(), sig)
    return True
