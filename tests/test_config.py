import pytest

from common.cli import build_parser, config_from_args
from common.config import ConfigError, get_default_config, merge_yaml
from resmlp.config import get_config


def write(path, text):
    path.write_text(text)
    return str(path)


def test_base_include_then_file_then_cli(tmp_path):
    write(tmp_path / "base.yaml", "DATA:\n  IMAGE_SIZE: 160\n  BATCH_SIZE: 8\nTRAIN:\n  EPOCHS: 7\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "mid.yaml", "BASE: ['../base.yaml']\nTRAIN:\n  EPOCHS: 9\n")
    cfg_path = write(sub / "top.yaml", "BASE: ['mid.yaml']\nDATA:\n  BATCH_SIZE: 16\n")
    args = build_parser().parse_args(["-cfg", cfg_path, "-batch_size", "4", "-opts", "TRAIN.BASE_LR", "0.5"])
    cfg = config_from_args(args, get_config())
    assert cfg.DATA.IMAGE_SIZE == 160       # from the grand-parent BASE
    assert cfg.TRAIN.EPOCHS == 9            # mid overrides base
    assert cfg.DATA.BATCH_SIZE == 4         # CLI overrides the file
    assert cfg.TRAIN.BASE_LR == 0.5         # -opts last
    assert cfg.MODEL.MIXER.DEPTH == -1      # method keys exist


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = write(tmp_path / "bad.yaml", "TRAIN:\n  EPOCHZ: 3\n")
    with pytest.raises(ConfigError, match="TRAIN.EPOCHZ"):
        merge_yaml(get_default_config(), path)


def test_unknown_key_in_opts_is_named():
    args = build_parser().parse_args(["-opts", "MODEL.NOPE", "1"])
    with pytest.raises(ConfigError, match="MODEL.NOPE"):
        config_from_args(args, get_config())


def test_odd_opts_and_bad_values_fail_clearly():
    with pytest.raises(ConfigError, match="KEY VALUE"):
        config_from_args(build_parser().parse_args(["-opts", "TRAIN.EPOCHS"]), get_config())
    with pytest.raises(ConfigError, match="OPTIMIZER.NAME"):
        config_from_args(build_parser().parse_args(["-opts", "TRAIN.OPTIMIZER.NAME", "Adam9"]), get_config())


def test_base_cycle_is_reported(tmp_path):
    a = write(tmp_path / "a.yaml", "BASE: ['b.yaml']\n")
    write(tmp_path / "b.yaml", "BASE: ['a.yaml']\n")
    with pytest.raises(ConfigError, match="cycle"):
        merge_yaml(get_default_config(), a)


def test_every_shipped_resmlp_config_loads():
    import glob
    import os
    from tests.helpers import REPO
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "resmlp", "*.yaml")))
    assert len(paths) >= 10
    for path in paths:
        cfg = config_from_args(build_parser().parse_args(["-cfg", path]), get_config())
        assert cfg.MODEL.NAME
