"""The official PIM code (chou141253/FGVC-PIM) for side runs: parity fixtures and the benchmark's PyTorch column.

It is not on PyPI and vendors its own `timm`, so its `models/` and `timm/` are exported from a checkout (a work tree
or a bare git repository) into a temporary folder that goes first on sys.path. Use it in a process of its own: the
vendored `timm` shadows an installed one.
"""
import os
import shutil
import subprocess
import sys
import tempfile

REFERENCE_ENV = "PIM_REF"


def export_reference(ref, dst):
    """models/ and timm/ of the reference checkout into `dst`."""
    if os.path.isdir(os.path.join(ref, "models")):
        for part in ("models", "timm"):
            shutil.copytree(os.path.join(ref, part), os.path.join(dst, part))
        return
    archive = subprocess.run(["git", f"--git-dir={ref}", "archive", "HEAD", "models", "timm"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dst], input=archive, check=True)


def import_reference(ref=None):
    """Make the reference's `models` (and its `timm`) importable; returns the temporary folder."""
    ref = ref or os.environ.get(REFERENCE_ENV, "")
    if not ref or not os.path.exists(ref):
        raise ImportError(f"the official PIM code is not on PyPI: clone github.com/chou141253/FGVC-PIM and set "
                          f"{REFERENCE_ENV} to the checkout (got '{ref}')")
    dst = tempfile.mkdtemp(prefix="pim_reference_")
    export_reference(ref, dst)
    sys.path.insert(0, dst)
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        del sys.modules[name]  # an installed timm imported earlier would shadow the vendored one
    return dst
