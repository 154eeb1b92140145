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
        assert (res.get("export_s", 0) > 0) == (mode == "predictor")   # the default -eval column's export cost


def test_default_eval_column_counts_the_export_once():
    from bench.__main__ import default_eval_ips
    assert default_eval_ips(20.0, 10.0, n=1000) == 1000 / (10.0 + 50.0)
    assert default_eval_ips(None, 10.0) is None and default_eval_ips(20.0, None) is None


def test_engine_and_bare_loop_measure_the_same_model():
    for mode in ("engine", "bare"):
        proc = run_cli([sys.executable, "-m", "bench.worker", "resmlp_12", "paddle", mode, "--batch", "2",
                        "--iters", "2", "--warmup", "1", "--threads", "1"], timeout=600)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert res["mode"] == mode and len(res["images_per_s"]) == 2 and min(res["images_per_s"]) > 0


def test_metadata_and_multi_head_architectures_export_to_the_predictor():
    # Dynamic MLP takes a second input; PIM returns a dict of heads with a selector inside
    for arch in ("sk2res2net101_dmlp_c", "pim_resnet50"):
        proc = run_cli([sys.executable, "-m", "bench.worker", arch, "paddle", "predictor", "--batch", "1",
                        "--iters", "1", "--warmup", "0", "--threads", "1"], timeout=600)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert res["images_per_s"][0] > 0, arch
