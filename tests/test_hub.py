"""Published weights by name (common/hub.py): download from a local HTTP server laid out like the real hosts,
verify, port with the registered rules, cache; offline and tampered cases."""
import hashlib
import os
import re
import socket
import threading

import numpy as np
import pytest

from common import hub
from common.hub_table import HUB_TABLE
from common.errors import SuiteError
from tests.hub_server import serve_folder

NAME = "timm/resmlp_12_224.fb_in1k"
TV_NAME = "torchvision/resnet50.IMAGENET1K_V1"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as (url, handler):
        yield root, url, handler


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    root, url, handler = server
    cache = tmp_path / "cache"
    monkeypatch.setenv("SUITE_CACHE", str(cache))
    monkeypatch.setenv("SUITE_HUB_ENDPOINT", url)
    monkeypatch.setenv("SUITE_TORCHVISION_ENDPOINT", url)
    return root, handler, cache


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    """A timm-layout resmlp_12_224 safetensors (real shapes, seeded random values), written at test time."""
    from common.porting import write_safetensors
    from resmlp.port_weights import paddle_key_to_timm
    from resmlp.resmlp import create_resmlp
    model = create_resmlp("resmlp_12_224")
    rng = np.random.RandomState(0)
    tensors = {}
    for k, v in sorted(model.state_dict().items()):
        value = (0.02 * rng.standard_normal(tuple(v.shape))).astype(np.float32)
        tk, tv = paddle_key_to_timm(k, value)
        tensors[tk] = np.ascontiguousarray(tv)
    path = tmp_path_factory.mktemp("fixture") / "model.safetensors"
    write_safetensors(str(path), tensors)
    return path


def _publish(root, timm_file, repo="resmlp_12_224.fb_in1k"):
    folder = root / "timm" / repo / "resolve" / "main"
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / "model.safetensors"
    dst.write_bytes(timm_file.read_bytes())
    return "/" + str(dst.relative_to(root))


def _cached_files(cache):
    """Files in the cache folder besides lock files (which hold nothing)."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and p.suffix != ".lock") if cache.exists() else []


def test_download_port_load_matches_manual_port_and_second_call_is_offline(env, timm_file, tmp_path, capsys):
    from common.checkpoint import load_pretrained
    from common.port import main as port_main
    from common.safe_pickle import load_paddle_file
    from resmlp.resmlp import create_resmlp
    root, handler, cache = env
    path = _publish(root, timm_file)

    got = hub.resolve(NAME, model_name="resmlp_12_224")
    assert handler.requests == [path]
    assert got == hub.ported_path(NAME, "resmlp_12_224") and os.path.isfile(got)
    assert "download model.safetensors" in capsys.readouterr().err   # progress on stderr

    by_hand = tmp_path / "by_hand.pdparams"
    assert port_main(["--model", "resmlp_12_224", "--src", str(timm_file), "--dst", str(by_hand)]) == 0
    a, b = load_paddle_file(got), load_paddle_file(str(by_hand))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)

    # the loading path by name: no request any more, the same weights in the model
    model = create_resmlp("resmlp_12_224")
    load_pretrained(model, NAME, model_name="resmlp_12_224", log=lambda m: None)
    assert handler.requests == [path]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), np.asarray(b[k]), err_msg=k)
    assert hub.resolve(NAME, model_name="resmlp_12_distilled_224").endswith("--resmlp_12_distilled_224.pdparams")
    assert handler.requests == [path]   # the source file is cached too: another model ports it without a request


def test_config_keeps_the_name_and_loading_fetches_it(env, timm_file):
    """-pretrained NAME: the config keeps the name (nothing touches the network when a config is read, e.g. by a
    test of a paper config); the runner's load_pretrained fetches, ports and loads it."""
    from common.checkpoint import load_pretrained
    from common.cli import build_parser, config_from_args
    from resmlp.config import get_config
    from resmlp.resmlp import create_resmlp
    root, handler, cache = env
    _publish(root, timm_file)
    args = build_parser().parse_args(["-cfg", "configs/resmlp/resmlp_12_224.yaml", "-pretrained", NAME])
    config = config_from_args(args, get_config())
    assert config.MODEL.PRETRAINED == NAME and handler.requests == []
    logs = []
    load_pretrained(create_resmlp("resmlp_12_224"), config.MODEL.PRETRAINED, model_name=config.MODEL.NAME,
                    method=config.MODEL.METHOD, log=logs.append)
    assert os.path.isfile(hub.ported_path(NAME, "resmlp_12_224")) and len(handler.requests) == 1
    assert any(hub.ported_path(NAME, "resmlp_12_224") in m for m in logs)


def test_truncated_download_is_refused_and_not_cached(env, timm_file):
    root, handler, cache = env
    handler.truncate.add(_publish(root, timm_file))
    with pytest.raises(hub.HubError) as e:
        hub.resolve(NAME)
    assert "bytes" in str(e.value)
    assert _cached_files(cache) == []


def test_tampered_file_is_refused_naming_both_hashes(env, timm_file, monkeypatch):
    root, handler, cache = env
    good = hashlib.sha256(timm_file.read_bytes()).hexdigest()
    entry = dict(HUB_TABLE[NAME], sha256=good)
    monkeypatch.setitem(HUB_TABLE, NAME, entry)
    path = _publish(root, timm_file)
    data = bytearray((root / path.lstrip("/")).read_bytes())
    data[-1] ^= 0xFF
    (root / path.lstrip("/")).write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(hub.HubError) as e:
        hub.resolve(NAME)
    assert good in str(e.value) and bad in str(e.value)
    assert _cached_files(cache) == []


def test_torchvision_hash_prefix_is_checked(env):
    root, handler, cache = env
    folder = root / "models"
    folder.mkdir()
    data = np.random.RandomState(1).bytes(4096)
    (folder / "resnet50-0676ba61.pth").write_bytes(data)
    with pytest.raises(hub.HubError) as e:
        hub.resolve(TV_NAME)
    assert "0676ba61" in str(e.value) and hashlib.sha256(data).hexdigest() in str(e.value)
    assert handler.requests == ["/models/resnet50-0676ba61.pth"]
    assert _cached_files(cache) == []


def test_offline_names_url_and_cache_path_then_manual_file_is_used(env, timm_file, monkeypatch):
    root, handler, cache = env
    monkeypatch.setenv("SUITE_HUB_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    url = hub.source_url(NAME)
    with pytest.raises(hub.HubError) as e:
        hub.resolve(NAME)
    assert isinstance(e.value, SuiteError)
    assert url in str(e.value) and hub.download_path(NAME) in str(e.value)
    assert _cached_files(cache) == []
    # the file placed by hand where the message says is verified and ported, still without network
    os.makedirs(os.path.dirname(hub.download_path(NAME)), exist_ok=True)
    with open(hub.download_path(NAME), "wb") as f:
        f.write(timm_file.read_bytes())
    assert os.path.isfile(hub.resolve(NAME, model_name="resmlp_12_224"))


def test_wrong_architecture_is_refused_naming_both(env):
    root, handler, cache = env
    with pytest.raises(hub.HubError) as e:
        hub.resolve("timm/inception_v4.tf_in1k", model_name="resmlp_24_224")
    assert "timm/inception_v4.tf_in1k" in str(e.value) and "resmlp_24_224" in str(e.value)
    assert "inception_v4" in str(e.value)
    assert handler.requests == []


def test_unknown_name_and_list():
    with pytest.raises(hub.HubError, match="not a published name"):
        hub.resolve("timm/resmlp_99_224.nope")
    for name in ("timm/resmlp_24_224.fb_distilled_in1k", "timm/inception_v4.tf_in1k",
                 "timm/swin_large_patch4_window12_384.ms_in22k", "torchvision/resnet50.IMAGENET1K_V1"):
        assert name in HUB_TABLE


def test_table_specs_exist():
    """Every port spec the table names is registered by a method folder."""
    from common.port import discover_specs
    registry, _, errors = discover_specs()
    assert not errors
    for name, entry in HUB_TABLE.items():
        for method, model, spec, allow in entry["models"]:
            assert spec in registry, (name, spec)


def test_local_safetensors_is_ported_on_the_fly_and_cached(env, timm_file, tmp_path):
    """-pretrained model.safetensors (not a .pdparams) with -cfg: ported with the model's rules, cached by path,
    size, mtime and model; the same weights as a port by hand; a changed file is ported again."""
    from common.checkpoint import load_pretrained
    from common.cli import build_parser, config_from_args
    from common.port import main as port_main
    from common.safe_pickle import load_paddle_file
    from resmlp.config import get_config
    from resmlp.resmlp import create_resmlp
    root, handler, cache = env
    local = tmp_path / "mine.safetensors"
    local.write_bytes(timm_file.read_bytes())
    args = build_parser().parse_args(["-cfg", "configs/resmlp/resmlp_12_224.yaml", "-pretrained", str(local)])
    config = config_from_args(args, get_config())
    assert config.MODEL.PRETRAINED == str(local)
    load_pretrained(create_resmlp("resmlp_12_224"), config.MODEL.PRETRAINED, model_name=config.MODEL.NAME,
                    log=lambda m: None)
    cached = hub.port_local(str(local), "resmlp_12_224", log=lambda m: None)
    assert cached.startswith(str(cache)) and cached.endswith("--resmlp_12_224.pdparams")
    by_hand = tmp_path / "by_hand.pdparams"
    assert port_main(["--model", "resmlp_12_224", "--src", str(local), "--dst", str(by_hand)]) == 0
    a, b = load_paddle_file(cached), load_paddle_file(str(by_hand))
    assert sorted(a) == sorted(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)

    logs = []
    model = create_resmlp("resmlp_12_224")
    load_pretrained(model, str(local), model_name="resmlp_12_224", log=logs.append)
    assert any("using its port cached" in m for m in logs)
    os.utime(local, ns=(1, 1))   # another modification time: another cache entry
    model2 = create_resmlp("resmlp_12_224")
    load_pretrained(model2, str(local), model_name="resmlp_12_224", log=lambda m: None)
    assert len(list((cache / "local").glob("*.pdparams"))) == 2
    assert handler.requests == []


def test_concurrent_callers_download_once(env, timm_file):
    """Processes of one run ask for the same name at once: one downloads and ports, the others wait for it."""
    root, handler, cache = env
    path = _publish(root, timm_file)
    results, errors = [], []

    def call():
        try:
            results.append(hub.resolve(NAME, model_name="resmlp_12_224", log=lambda m: None))
        except Exception as e:  # noqa: B902 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(set(results)) == 1 and len(results) == 3
    assert handler.requests == [path]


def test_suite_hub_table_adds_and_amends_names_and_bad_files_are_named(tmp_path, monkeypatch):
    from common.config import ConfigError
    from common.hub_table import HUB_TABLE, hub_table
    table = tmp_path / "table.json"
    table.write_text('{"torchvision/resnet50.IMAGENET1K_V1": {"sha256": "ab"}, "timm/my_lab_resnet50.v1": '
                     '{"repo": "my_lab_resnet50.v1", "file": "model.safetensors", '
                     '"models": [["transfer", "resnet50", "resnet50", []]]}}')
    monkeypatch.setenv("SUITE_HUB_TABLE", str(table))
    got = hub_table()
    assert got["torchvision/resnet50.IMAGENET1K_V1"]["sha256"] == "ab"
    assert got["torchvision/resnet50.IMAGENET1K_V1"]["models"] == HUB_TABLE["torchvision/resnet50.IMAGENET1K_V1"][
        "models"]                                             # the other fields stay the table's
    assert hub.check_name("timm/my_lab_resnet50.v1", "resnet50", "transfer") == ("transfer", "resnet50", "resnet50",
                                                                                  ())
    assert hub.source_url("timm/my_lab_resnet50.v1").endswith("/timm/my_lab_resnet50.v1/resolve/main/model.safetensors")
    for text, says in (("{not json", "cannot read it as JSON"), ('{"timm/x": {"sha": "1"}}', "unknown field(s) sha"),
                       ('{"timm/x": {"file": "f"}}', "entry 'timm/x' lacks models, repo"),
                       ('{"x/y": {}}', "names start with timm/ or torchvision/")):
        table.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(says)):
            hub_table()
