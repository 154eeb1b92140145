import glob
import os
import subprocess
import sys

import pytest

from common import launch
from tests.helpers import REPO, TINY_RESMLP, env


def test_cpu_single_process_runs_the_script_directly():
    cmd = launch.build_command("train", ["-cfg", "configs/resmlp/demo.yaml"], gpus=[], nproc=1)
    assert cmd[0] == sys.executable and cmd[1].endswith(os.path.join("resmlp", "main_multi_gpu.py"))
    assert cmd[2:] == ["-cfg", "configs/resmlp/demo.yaml"]


def test_gpus_and_cpu_processes_go_through_the_paddle_launcher():
    cmd = launch.build_command("eval", ["-cfg", "configs/resmlp/demo.yaml", "-output", "o"], gpus=["0", "1"], nproc=2)
    assert cmd[1:5] == ["-m", "paddle.distributed.launch", "--gpus", "0,1"]
    assert cmd[-1] == "-eval"                              # eval mode adds the flag
    cmd = launch.build_command("train", ["-cfg", "configs/resmlp/demo.yaml"], gpus=[], nproc=3, ips="a,b")
    assert "--nproc_per_node" in cmd and cmd[cmd.index("--nproc_per_node") + 1] == "3"
    assert cmd[cmd.index("--ips") + 1] == "a,b"


def test_method_comes_from_the_config_or_the_model_registry_never_the_folder_name(tmp_path, monkeypatch):
    monkeypatch.delenv("METHOD", raising=False)
    def method(text):
        cfg = tmp_path / "configs" / "resmlp" / "x.yaml"      # a folder name that must not count
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(text)
        return launch.method_for(["-cfg", str(cfg)])
    assert method("MODEL:\n  METHOD: pim\n").name == "pim"
    assert method("MODEL:\n  NAME: resnet50_dynamic_mlp_c\n").name == "dynamic_mlp"    # by the registry
    assert method("MODEL:\n  NAME: swin_tiny_patch4_window7_224\n").script.endswith("pim/main_multi_gpu.py")
    with pytest.raises(SystemExit, match="resnet50 is a model of pim and transfer: say which with MODEL.METHOD"):
        method("MODEL:\n  NAME: resnet50\n")
    with pytest.raises(SystemExit, match="cannot tell which method to run"):
        method("DATA:\n  BATCH_SIZE: 4\n")
    with pytest.raises(SystemExit, match="names method 'nope', not one of dynamic_mlp, pim, resmlp, transfer"):
        method("MODEL:\n  METHOD: nope\n")
    for cfg in glob.glob(os.path.join(launch.REPO, "configs", "*", "*.yaml")):   # every shipped config says
        assert launch.model_key_in_config(cfg, "METHOD") == os.path.basename(os.path.dirname(cfg)), cfg


def test_no_arguments_means_the_demo_job(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "REPO", str(tmp_path))
    os.makedirs(tmp_path / "configs" / "resmlp")
    args = launch.demo_args("train")
    assert args[args.index("-data_path") + 1] == str(tmp_path / "demo_data")
    assert os.path.exists(tmp_path / "demo_data" / "train_list.txt")   # written on first use
    with pytest.raises(SystemExit, match="run 'sh run_train_multi.sh' first"):
        launch.demo_args("eval")


def test_cpu_threads_are_the_process_share_of_the_cores(monkeypatch):
    import common
    from common import dist
    monkeypatch.setattr(common, "USER_OMP_NUM_THREADS", "3")
    assert dist.cpu_threads() == 3                       # the launcher's (or the user's) choice wins
    monkeypatch.setattr(common, "USER_OMP_NUM_THREADS", None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "4")
    assert dist.cpu_threads() == 2                       # 8 usable cores shared by 4 processes on this node
    monkeypatch.delenv("PADDLE_LOCAL_SIZE")
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    assert dist.cpu_threads() == 8


def test_the_launcher_gives_each_worker_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert launch.worker_threads(1) == "8"
    assert launch.worker_threads(4) == "2"
    assert launch.worker_threads(16) == "1"
    assert launch.worker_threads(4, "3") == "3"          # the user's choice wins
    assert launch.worker_threads(2, "") == "4"           # empty counts as unset


def test_a_single_process_run_uses_every_core(small_demo, tmp_path):
    """Through run_train_multi.sh with OMP_NUM_THREADS unset: the launcher imports Paddle (to look for GPUs), whose
    import sets OMP_NUM_THREADS=1; the worker must still get all cores."""
    out = str(tmp_path / "one")
    e = env()
    e.pop("OMP_NUM_THREADS")
    subprocess.run(["sh", "run_train_multi.sh", "-cfg", "configs/resmlp/demo.yaml", "-data_path", small_demo,
                    "-output", out, "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "1"], cwd=REPO, env=e, check=True,
                   capture_output=True, timeout=600)
    with open(os.path.join(out, "log.txt")) as f:
        assert f"on cpu (math threads per process: {len(os.sched_getaffinity(0))}), 1 process(es)" in f.read()


def test_a_direct_run_uses_every_core(small_demo, tmp_path):
    """`python resmlp/main_multi_gpu.py` with OMP_NUM_THREADS unset: Paddle's import sets it to 1, which must not be
    taken for the user's choice."""
    out = str(tmp_path / "direct")
    e = env()
    e.pop("OMP_NUM_THREADS")
    subprocess.run([sys.executable, "resmlp/main_multi_gpu.py", "-cfg", "configs/resmlp/demo.yaml", "-data_path",
                    small_demo, "-output", out, "-eval", "-opts", *TINY_RESMLP], cwd=REPO, env=e, check=True,
                   capture_output=True, timeout=600)
    with open(os.path.join(out, "log.txt")) as f:
        assert f"on cpu (math threads per process: {len(os.sched_getaffinity(0))}), 1 process(es)" in f.read()


@pytest.mark.parametrize("vendor,preset,expected", [("AuthenticAMD", None, "5"), ("GenuineIntel", None, None),
                                                    ("AuthenticAMD", "0", "0")])
def test_mkl_fast_path_is_requested_on_amd_only_and_a_user_choice_wins(monkeypatch, vendor, preset, expected):
    from common import dist
    monkeypatch.setattr(dist, "cpu_vendor", lambda: vendor)
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", preset or "")   # recorded, so the variable is restored afterwards
    if preset is None:
        monkeypatch.delenv("MKL_DEBUG_CPU_TYPE")
    assert dist.prefer_fast_mkl_on_amd() == (expected == "5")
    assert os.environ.get("MKL_DEBUG_CPU_TYPE") == expected


@pytest.mark.parametrize("user_env", [None, "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"])
def test_malloc_threshold_is_fixed_unless_the_user_tuned_malloc(monkeypatch, user_env):
    import platform
    from common import dist
    for k in dist.MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    if user_env:
        monkeypatch.setenv(user_env, "1")
    glibc = platform.libc_ver()[0] == "glibc"
    assert dist.keep_activations_on_the_heap() == (glibc and user_env is None)


def test_predict_run_directly_uses_every_core(small_demo, tmp_path):
    out = str(tmp_path / "run")
    subprocess.run([sys.executable, "resmlp/main_multi_gpu.py", "-cfg", "configs/resmlp/demo.yaml", "-data_path",
                    small_demo, "-output", out, "-opts", *TINY_RESMLP, "TRAIN.EPOCHS", "1"], cwd=REPO, env=env(),
                   check=True, capture_output=True, timeout=600)
    e = env()
    e.pop("OMP_NUM_THREADS")
    proc = subprocess.run([sys.executable, "resmlp/predict.py", "-pretrained", os.path.join(out, "last.pdparams"),
                           "-image", os.path.join(small_demo, "val_list.txt")], cwd=REPO, env=e, check=True,
                          capture_output=True, text=True, timeout=600)
    assert f"cpu: {len(os.sched_getaffinity(0))} math threads" in proc.stderr


def test_a_cfg_that_cannot_be_read_is_named_by_the_launcher(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL: [1\n")
    with pytest.raises(SystemExit, match=r"^error: config file not found: .*nope\.yaml$"):
        launch.method_for(["-cfg", str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit, match=r"^error: .*bad\.yaml: invalid YAML at line 2"):
        launch.method_for(["-cfg", str(bad)])
