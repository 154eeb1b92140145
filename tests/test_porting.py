"""common.porting: the torch-free checkpoint reader, its refusal of pickled code, and the strict mapping rules.

None of these tests needs torch: the torch-written fixtures under tests/fixtures/porting/ were made once by
tests/fixtures/make_porting_fixtures.py, and crafted files are written here with a tiny pickler.
"""
import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from common.porting import (CheckpointFormatError, Drop, PortError, PrefixRename, RegexRename,  # noqa: E402
                            Reshape, Transpose, UnsafePickleError, apply_rules, batchnorm_rules,
                            checkpoint_format, load_checkpoint_any, port_state_dict, read_safetensors,
                            read_torch_checkpoint, unwrap_state_dict, write_safetensors)
from common.safe_pickle import load_paddle_file  # noqa: E402

FIX = os.path.join(REPO, "tests", "fixtures", "porting")
TORCH_FILES = ["torch_zip.pt", "torch_legacy.pt", "torch_legacy_p4.pt"]


def expected():
    with np.load(os.path.join(FIX, "reader_expected.npz")) as z:
        return {k: z[k] for k in z.files}


def flatten(obj, prefix=""):
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}/"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}/"))
    elif isinstance(obj, np.ndarray):
        out[prefix[:-1]] = obj
    return out


# --------------------------------------------------------------------------------------------------------------
# A minimal writer of torch-style pickles, so that crafted (broken or malicious) checkpoints need no torch.

class G:
    """A global `module.name` as the pickle names it (callable so that pickle accepts it in a reduce)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise AssertionError("never called while writing")


class Call:
    """Pickles as `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Pid:
    """Pickles as a persistent id (what torch uses for storages)."""

    def __init__(self, *parts):
        self.parts = parts


class _Writer(pickle._Pickler):
    def persistent_id(self, obj):
        return obj.parts if isinstance(obj, Pid) else None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, G):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def dumps(obj, protocol=2):
    buf = io.BytesIO()
    _Writer(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def torch_tensor(key, storage, numel, offset, size, stride, legacy=False):
    """A tensor as torch pickles it; the legacy stream format adds a (here empty) storage-view field."""
    hooks = Call(G("collections", "OrderedDict"))
    pid = ("storage", G("torch", storage), key, "cpu", numel) + ((None,) if legacy else ())
    return Call(G("torch._utils", "_rebuild_tensor_v2"), Pid(*pid), offset, tuple(size), tuple(stride), False,
                hooks)


def write_zip(path, obj_pickle, storages=None, root="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", obj_pickle)
        z.writestr(f"{root}/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", data)
        z.writestr(f"{root}/version", "3\n")


def write_legacy(path, obj_pickle, storages=None):
    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        f.write(obj_pickle)
        storages = storages or {}
        f.write(pickle.dumps(sorted(storages), protocol=2))
        for key in sorted(storages):
            arr = storages[key]
            f.write(struct.pack("<q", arr.size))
            f.write(arr.astype(arr.dtype.newbyteorder("<")).tobytes())


# --------------------------------------------------------------------------------------------------------------
# Reading torch.save files

@pytest.mark.parametrize("name", TORCH_FILES)
def test_torch_checkpoint_round_trip(name):
    obj = read_torch_checkpoint(os.path.join(FIX, name))
    exp = expected()
    got = flatten(obj)
    assert sorted(got) == sorted(exp)
    for k, want in exp.items():
        have = got[k]
        if want.dtype == np.float16:  # fp16 comes back as float32 unless keep_dtype
            assert have.dtype == np.float32, k
            want = want.astype(np.float32)
        assert have.dtype == want.dtype, (k, have.dtype, want.dtype)
        assert have.shape == want.shape, (k, have.shape, want.shape)
        np.testing.assert_array_equal(have, want, err_msg=k)
        assert have.flags.c_contiguous and have.flags.writeable, k  # a copy, not a view of the file bytes
    m = obj["model"]
    assert isinstance(m, collections.OrderedDict)
    assert list(m)[:3] == ["linear.weight", "linear.bias", "transposed"]
    np.testing.assert_array_equal(m["transposed"], m["linear.weight"].T)
    np.testing.assert_array_equal(m["strided"], m["linear.weight"][:, ::2])
    np.testing.assert_array_equal(m["shared_slice"], m["shared_full"][2:7])
    assert m["scalar"].shape == () and m["scalar"] == np.float32(3.25)
    assert m["step"].dtype == np.int64 and m["step"] == 17
    assert m["bn.num_batches_tracked"].dtype == np.int64 and m["bn.num_batches_tracked"] == 11
    assert m["int_buffer"].dtype == np.int64 and m["bool_mask"].dtype == np.bool_
    assert m["bf16"].dtype == np.float32
    assert m["empty"].shape == (0, 3)
    assert obj["epoch"] == 7 and float(obj["best_acc1"]) == 81.25
    assert obj["args"].lr == 0.1 and obj["args"].model == "resmlp_12_224"
    assert obj["list"][1:] == ["text", 2] and obj["tuple"][1] == 1.5


@pytest.mark.parametrize("name", TORCH_FILES)
def test_keep_dtype_keeps_half(name):
    m = read_torch_checkpoint(os.path.join(FIX, name), keep_dtype=True)["model"]
    assert m["half"].dtype == np.float16
    np.testing.assert_array_equal(m["half"], expected()["model/half"])
    assert m["bf16"].dtype == np.float32  # numpy has no bfloat16


def test_fixture_really_shares_storages():
    """The zip fixture must hold fewer storages than tensors, otherwise the sharing test above tests nothing."""
    with zipfile.ZipFile(os.path.join(FIX, "torch_zip.pt")) as z:
        n_storages = sum(1 for n in z.namelist() if "/data/" in n)
    n_tensors = len(expected())
    assert n_storages <= n_tensors - 3


def test_zip_root_name_does_not_matter(tmp_path):
    src = os.path.join(FIX, "torch_zip.pt")
    dst = tmp_path / "renamed.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr("some-other_root/" + info.filename.split("/", 1)[1], zin.read(info.filename))
    a = flatten(read_torch_checkpoint(src))
    b = flatten(read_torch_checkpoint(str(dst)))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_crafted_tensor_outside_its_storage_is_rejected(tmp_path):
    # 4 floats of storage, but the tensor claims 3x3: must fail cleanly instead of reading past the buffer
    data = np.arange(4, dtype="<f4").tobytes()
    bad = dumps({"w": torch_tensor("0", "FloatStorage", 4, 0, (3, 3), (3, 1))})
    write_zip(tmp_path / "bad.pt", bad, {"0": data})
    with pytest.raises(CheckpointFormatError, match="storage '0'"):
        read_torch_checkpoint(str(tmp_path / "bad.pt"))
    ok = dumps({"w": torch_tensor("0", "FloatStorage", 4, 1, (3,), (1,))})
    write_zip(tmp_path / "ok.pt", ok, {"0": data})
    np.testing.assert_array_equal(read_torch_checkpoint(str(tmp_path / "ok.pt"))["w"], [1, 2, 3])
    ok_legacy = dumps({"w": torch_tensor("0", "FloatStorage", 4, 1, (3,), (1,), legacy=True)})
    write_legacy(tmp_path / "ok_legacy.pt", ok_legacy, {"0": np.arange(4, dtype=np.float32)})
    np.testing.assert_array_equal(read_torch_checkpoint(str(tmp_path / "ok_legacy.pt"))["w"], [1, 2, 3])
    truncated = dumps({"w": torch_tensor("0", "FloatStorage", 8, 0, (8,), (1,))})
    write_zip(tmp_path / "short.pt", truncated, {"0": data})
    with pytest.raises(CheckpointFormatError, match="bytes"):
        read_torch_checkpoint(str(tmp_path / "short.pt"))


def test_protocol2_builtins_and_broadcast_views(tmp_path):
    """torch pickles with protocol 2, which spells `set` as `__builtin__.set` and bytes via `_codecs.encode`;
    an expanded tensor is saved with stride 0."""
    obj = dumps({"tags": {"a", "b"}, "raw": b"\x00\xff",
                 "w": torch_tensor("0", "FloatStorage", 3, 0, (2, 3), (0, 1))}, protocol=2)
    write_zip(tmp_path / "p2.pt", obj, {"0": np.arange(3, dtype="<f4").tobytes()})
    got = read_torch_checkpoint(str(tmp_path / "p2.pt"))
    assert got["tags"] == {"a", "b"} and got["raw"] == b"\x00\xff"
    np.testing.assert_array_equal(got["w"], [[0, 1, 2], [0, 1, 2]])
    evil_codec = dumps({"x": Call(G("_codecs", "encode"), "abc", "rot13")})
    write_zip(tmp_path / "codec.pt", evil_codec)
    with pytest.raises(UnsafePickleError, match="rot13"):
        read_torch_checkpoint(str(tmp_path / "codec.pt"))


def test_bf16_bits_are_widened_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    obj = dumps({"w": torch_tensor("0", "BFloat16Storage", 4, 0, (2, 2), (1, 2))})  # a transposed view
    write_zip(tmp_path / "bf.pt", obj, {"0": bits.tobytes()})
    got = read_torch_checkpoint(str(tmp_path / "bf.pt"))["w"]
    want = (bits.astype(np.uint32) << 16).view(np.float32).reshape(2, 2).T
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------------------------
# safetensors

def _raw_safetensors(path, entries):
    """entries: name -> (dtype string, shape, raw bytes)."""
    header, blobs, off = {}, [], 0
    for name, (dt, shape, raw) in entries.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_round_trip(tmp_path):
    rng = np.random.RandomState(0)
    tensors = {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "a.bias": rng.standard_normal(5).astype(np.float64),
        "half": rng.standard_normal((2, 2)).astype(np.float16),
        "idx": np.arange(7, dtype=np.int64),
        "mask": np.array([True, False]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    path = str(tmp_path / "t.safetensors")
    write_safetensors(path, tensors, metadata={"format": "pt"})
    assert checkpoint_format(path) == "safetensors"
    got, meta = read_safetensors(path, keep_dtype=True, return_metadata=True)
    assert meta == {"format": "pt"}
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
    assert read_safetensors(path)["half"].dtype == np.float32
    # bfloat16 written by hand
    bits = np.array([0x3F80, 0xC020, 0x0000], dtype="<u2")
    _raw_safetensors(tmp_path / "bf.safetensors", {"x": ("BF16", (3,), bits.tobytes())})
    np.testing.assert_array_equal(read_safetensors(str(tmp_path / "bf.safetensors"))["x"], [1.0, -2.5, 0.0])
    # offsets that do not fit the data are an error, not an out-of-bounds read
    _raw_safetensors(tmp_path / "bad.safetensors", {"x": ("F32", (4,), b"\0" * 8)})
    with pytest.raises(CheckpointFormatError, match="'x'"):
        read_safetensors(str(tmp_path / "bad.safetensors"))


def test_safetensors_agrees_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.RandomState(1)
    tensors = {"w": rng.standard_normal((4, 3)).astype(np.float32), "i": np.arange(3, dtype=np.int32),
               "h": rng.standard_normal(5).astype(np.float16)}
    theirs = str(tmp_path / "theirs.safetensors")
    st.save_file(tensors, theirs)
    ours_read = read_safetensors(theirs, keep_dtype=True)
    mine = str(tmp_path / "mine.safetensors")
    write_safetensors(mine, tensors)
    theirs_read = st.load_file(mine)
    for k, v in tensors.items():
        np.testing.assert_array_equal(ours_read[k], v)
        np.testing.assert_array_equal(theirs_read[k], v)
        assert theirs_read[k].dtype == v.dtype


# --------------------------------------------------------------------------------------------------------------
# Format detection and the single entry point

def test_load_checkpoint_any_dispatches_by_content(tmp_path):
    import paddle

    assert checkpoint_format(os.path.join(FIX, "torch_zip.pt")) == "torch_zip"
    assert checkpoint_format(os.path.join(FIX, "torch_legacy.pt")) == "torch_legacy"
    assert checkpoint_format(os.path.join(FIX, "torch_legacy_p4.pt")) == "torch_legacy"
    pd = str(tmp_path / "w.bin")  # the extension says nothing; the content decides
    paddle.save({"w": paddle.to_tensor(np.ones((2, 3), dtype=np.float32))}, pd)
    obj, fmt = load_checkpoint_any(pd, return_format=True)
    assert fmt == "pickle"
    np.testing.assert_array_equal(obj["w"], np.ones((2, 3)))
    st = str(tmp_path / "w.pth")
    write_safetensors(st, {"w": np.ones(2, dtype=np.float32)})
    assert load_checkpoint_any(st, return_format=True)[1] == "safetensors"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointFormatError):
        load_checkpoint_any(str(junk))
    with pytest.raises(FileNotFoundError):
        load_checkpoint_any(str(tmp_path / "nope.pth"))


# --------------------------------------------------------------------------------------------------------------
# Malicious files: refused, naming the global, and the payload never runs

def _payloads(marker):
    return {
        f"{os.system.__module__}.system": Call(os.system, f"touch {marker}"),
        "builtins.exec": Call(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": Call(subprocess.call, ["touch", str(marker)]),
    }


def _evil_checkpoints(tmp_path, payload, marker):
    """The payload in a zip checkpoint (inside the state dict and inside a storage id), a legacy one, and a
    paddle-style pickle."""
    files = {}
    good = torch_tensor("0", "FloatStorage", 2, 0, (2,), (1,))
    data = np.ones(2, dtype="<f4").tobytes()
    p = tmp_path / "zip_state.pth"
    write_zip(p, dumps({"model": {"w": good, "evil": payload}}), {"0": data})
    files["zip_state"] = p
    p = tmp_path / "zip_pid.pth"
    smuggled = Call(G("torch._utils", "_rebuild_tensor_v2"), Pid("storage", payload, "0", "cpu", 2),
                    0, (2,), (1,), False, Call(G("collections", "OrderedDict")))
    write_zip(p, dumps({"w": smuggled}), {"0": data})
    files["zip_pid"] = p
    p = tmp_path / "legacy.pth"
    good_legacy = torch_tensor("0", "FloatStorage", 2, 0, (2,), (1,), legacy=True)
    write_legacy(p, dumps({"model": {"w": good_legacy, "evil": payload}}), {"0": np.ones(2, dtype=np.float32)})
    files["legacy"] = p
    p = tmp_path / "plain.pdparams"
    p.write_bytes(pickle.dumps({"w": np.ones(2, dtype=np.float32), "evil": payload}, protocol=4))
    files["paddle"] = p
    return files


@pytest.mark.parametrize("global_name", list(_payloads("x")))
def test_malicious_checkpoints_are_refused_and_do_not_run(tmp_path, global_name):
    marker = tmp_path / "PWNED"
    payload = _payloads(marker)[global_name]
    files = _evil_checkpoints(tmp_path, payload, marker)
    for kind, path in files.items():
        loaders = [load_checkpoint_any] + ([load_paddle_file] if kind == "paddle" else [read_torch_checkpoint])
        for load in loaders:
            with pytest.raises(UnsafePickleError) as err:
                load(str(path))
            assert global_name in str(err.value), (kind, str(err.value))
            assert not marker.exists(), f"payload ran while loading {kind} with {load.__name__}"
    # control: the payload is real; an ordinary unpickler runs it
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert marker.exists()


def test_cli_refuses_malicious_file(tmp_path, capsys):
    from common.port import main

    marker = tmp_path / "PWNED"
    files = _evil_checkpoints(tmp_path, _payloads(marker)["builtins.exec"], marker)
    status = main(["--model", "resmlp_12_224", "--src", str(files["zip_state"]), "--dst", str(tmp_path / "o.pd")])
    assert status == 1
    assert "builtins.exec" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o.pd").exists()


def test_whole_pickled_module_is_refused(tmp_path):
    obj = dumps({"model": Call(G("timm.models.mlp_mixer", "MlpMixer"))})
    write_zip(tmp_path / "m.pth", obj)
    with pytest.raises(UnsafePickleError, match="timm.models.mlp_mixer.MlpMixer"):
        read_torch_checkpoint(str(tmp_path / "m.pth"))


# --------------------------------------------------------------------------------------------------------------
# Unwrapping

def _sd(*keys):
    return {k: np.zeros(2, dtype=np.float32) for k in keys}


def test_unwrap_state_dict_wrappers_and_prefixes():
    assert list(unwrap_state_dict(_sd("a", "b"))) == ["a", "b"]
    assert list(unwrap_state_dict({"state_dict": _sd("module.a", "module.b"), "epoch": 3})) == ["a", "b"]
    ckpt = {"model": _sd("module.x"), "model_ema": _sd("module.y"), "optimizer": {"state": {}}, "epoch": 1}
    sd, info = unwrap_state_dict(ckpt, return_info=True)
    assert list(sd) == ["x"] and info["path"] == ["model"] and info["stripped"] == ["module."]
    assert "model_ema" in info["alternatives"]
    assert list(unwrap_state_dict(ckpt, key="model_ema")) == ["y"]
    assert list(unwrap_state_dict({"model_ema": _sd("module.y")})) == ["y"]
    assert list(unwrap_state_dict({"outer": {"model": _sd("_orig_mod.z")}}, key="outer")) == ["z"]
    assert list(unwrap_state_dict({"a": {"b": _sd("k")}}, key="a/b")) == ["k"]
    # only some keys prefixed: a real submodule called "module", left alone
    assert sorted(unwrap_state_dict(_sd("module.a", "head.w"))) == ["head.w", "module.a"]
    with pytest.raises(KeyError, match="model_ema"):
        unwrap_state_dict({"model": _sd("a")}, key="model_ema")
    with pytest.raises(CheckpointFormatError, match="optimizer"):
        unwrap_state_dict({"optimizer": {"state": {}}, "epoch": 1})


def test_unwrap_real_fixture():
    obj = read_torch_checkpoint(os.path.join(FIX, "torch_legacy.pt"))
    sd = unwrap_state_dict(obj)
    assert "linear.weight" in sd and "bn.running_var" in sd


# --------------------------------------------------------------------------------------------------------------
# Rules and strictness

def _src():
    rng = np.random.RandomState(0)
    return {
        "stem.proj.weight": rng.standard_normal((8, 3, 2, 2)).astype(np.float32),
        "blocks.0.fc.weight": rng.standard_normal((6, 4)).astype(np.float32),
        "blocks.0.fc.bias": rng.standard_normal(6).astype(np.float32),
        "blocks.0.alpha": rng.standard_normal(4).astype(np.float32),
        "head.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "head.bias": rng.standard_normal(10).astype(np.float32),
    }


RULES = [PrefixRename("stem.proj.", "patch.conv."), PrefixRename("blocks.", "layers."),
         Reshape(r".*\.alpha"), Transpose(r".*\.weight", ndim=2)]
TARGET = {"patch.conv.weight": (8, 3, 2, 2), "layers.0.fc.weight": (4, 6), "layers.0.fc.bias": (6,),
          "layers.0.alpha": (1, 1, 4), "head.weight": (4, 10), "head.bias": (10,)}


def test_port_state_dict_happy_path():
    src = _src()
    out, report = port_state_dict(src, TARGET, RULES)
    assert sorted(out) == sorted(TARGET)
    np.testing.assert_array_equal(out["layers.0.fc.weight"], src["blocks.0.fc.weight"].T)
    np.testing.assert_array_equal(out["patch.conv.weight"], src["stem.proj.weight"])  # 4-D: not transposed
    np.testing.assert_array_equal(out["layers.0.alpha"], src["blocks.0.alpha"].reshape(1, 1, 4))
    assert report.filled["layers.0.fc.weight"] == "blocks.0.fc.weight"
    assert not report.leftovers and not report.missing and not report.missing_allowed
    assert "ported 6 tensors" in report.summary()


def test_missing_key_fails_naming_it():
    src = _src()
    del src["blocks.0.fc.bias"]
    with pytest.raises(PortError, match=r"layers\.0\.fc\.bias"):
        port_state_dict(src, TARGET, RULES)


def test_extra_key_fails_naming_it():
    src = _src()
    src["blocks.0.extra.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(PortError, match=r"blocks\.0\.extra\.weight"):
        port_state_dict(src, TARGET, RULES)


def test_wrong_shape_fails_naming_both_keys_and_shapes():
    src = _src()
    src["blocks.0.fc.weight"] = np.zeros((6, 5), dtype=np.float32)
    with pytest.raises(PortError) as err:
        port_state_dict(src, TARGET, RULES)
    msg = str(err.value)
    assert "'blocks.0.fc.weight' (6, 5)" in msg and "'layers.0.fc.weight'" in msg and "(4, 6)" in msg


def test_two_sources_for_one_target_fail():
    src = _src()
    src["stem.proj.bias"] = np.zeros(8, dtype=np.float32)
    rules = [RegexRename(r"^stem\.proj\.bias$", "head.bias")] + RULES
    with pytest.raises(PortError, match=r"'head\.bias' is produced by several source keys"):
        port_state_dict(src, TARGET, rules)


def test_allow_missing_for_a_new_head():
    src = _src()
    target = dict(TARGET, **{"head.weight": (4, 3), "head.bias": (3,)})
    with pytest.raises(PortError, match=r"head\.weight"):
        port_state_dict(src, target, RULES)
    out, report = port_state_dict(src, target, RULES, allow_missing=["head"])
    assert "head.weight" not in out and "head.bias" not in out
    assert sorted(report.missing_allowed) == ["head.bias", "head.weight"]
    assert len(report.skipped) == 2 and "allow-missing" in report.summary()
    # the pattern must not excuse other keys
    src2 = dict(src)
    del src2["blocks.0.fc.bias"]
    with pytest.raises(PortError, match=r"layers\.0\.fc\.bias"):
        port_state_dict(src2, target, RULES, allow_missing=["head"])
    # a pattern that matches nothing is a mistake worth reporting
    with pytest.raises(PortError, match="match no key"):
        port_state_dict(src, TARGET, RULES, allow_missing=["classifier"])


def test_batchnorm_rules_and_drop():
    src = {"bn.weight": np.ones(3, np.float32), "bn.bias": np.zeros(3, np.float32),
           "bn.running_mean": np.arange(3, dtype=np.float32), "bn.running_var": np.ones(3, np.float32),
           "bn.num_batches_tracked": np.array(5), "head_dist.weight": np.ones((2, 3), np.float32)}
    target = {"bn.weight": (3,), "bn.bias": (3,), "bn._mean": (3,), "bn._variance": (3,)}
    rules = batchnorm_rules() + [Drop("head_dist", reason="distillation head")]
    out, report = port_state_dict(src, target, rules)
    np.testing.assert_array_equal(out["bn._mean"], [0, 1, 2])
    assert sorted(s for s, _ in report.dropped) == ["bn.num_batches_tracked", "head_dist.weight"]
    with pytest.raises(PortError, match="num_batches_tracked"):
        port_state_dict(src, target, [r for r in rules if not isinstance(r, Drop)])


def test_key_patterns_match_whole_keys_or_dotted_prefixes():
    assert apply_rules("head.weight", np.zeros((2, 3)), [Drop("head")])[0] is None
    assert apply_rules("head_dist.weight", np.zeros((2, 3)), [Drop("head")])[0] == "head_dist.weight"
    key, value, ops = apply_rules("a.weight", np.zeros((2, 3)), [Transpose(r".*\.weight")])
    assert value.shape == (3, 2) and ops
    key, value, ops = apply_rules("a.weight", np.zeros((2, 3, 4)), [Transpose(r".*\.weight")])
    assert value.shape == (2, 3, 4) and not ops  # only 2-D by default


def test_dtypes_follow_the_target():
    src = {"w": np.ones((2, 2), np.float16), "n": np.array(3, np.int64)}
    out, _ = port_state_dict(src, {"w": (2, 2), "n": ()}, [], target_dtypes={"w": np.float32, "n": np.int64})
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64
    with pytest.raises(PortError, match="dtype"):
        port_state_dict(src, {"w": (2, 2), "n": ()}, [], target_dtypes={"w": np.float32, "n": np.float32})
