"""The benchmark keeps working (it is a script; no speed is asserted here)."""
import json
import sys

from tests.helpers import run_cli


def test_bench_worker_measures_paddle_and_the_exported_predictor():
    for mode in ("train", "predictor"):
        proc = run_cli([sys.executable, "-m", "bench.worker", "resmlp_12", "paddle", mode, "--batch", "2",
                        "--iters", "1", "--warmup", "0", "--threads", "1"], timeout=600)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert res["mode"] == mode and len(res["images_per_s"]) == 1 and res["images_per_s"][0] > 0
        assert res["peak_rss_mb"] > 100
