"""Shared test utilities: run the real CLIs in a subprocess and read their outputs."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a ResMLP small enough for CPU tests (32 px, patch 8 -> 16 tokens, 2 blocks of width 32)
TINY_RESMLP = ["MODEL.NAME", "resmlp_12_224", "MODEL.NUM_CLASSES", "8", "MODEL.MIXER.PATCH_SIZE", "8",
               "MODEL.MIXER.EMBED_DIM", "32", "MODEL.MIXER.DEPTH", "2", "DATA.IMAGE_SIZE", "32",
               "DATA.NUM_WORKERS", "0", "REPORT_FREQ", "4", "VISUALDL", "False"]


def env(**extra):
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run_cli(args, timeout=600, check=True, **extra_env):
    proc = subprocess.run(args, cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(args)}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def resmlp_main(*args):
    return [sys.executable, os.path.join(REPO, "resmlp", "main_multi_gpu.py"), *args]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def rel(out, ref):
    """max|out - ref| / max|ref| in float64 (max|out| when ref is all zeros): the training-step tests' measure."""
    import numpy as np
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    scale = np.abs(ref).max()
    return float(np.abs(out - ref).max() / scale) if scale > 0 else float(np.abs(out).max())


def method_config(method, recipe, opts):
    """`method`'s config with the yaml `recipe` merged, then `opts` (the step tests' tiny model)."""
    from common.config import merge_opts, merge_yaml
    c = method.get_config()
    merge_yaml(c, recipe)
    merge_opts(c, opts)
    return c
