"""Hostile and odd checkpoint / config files: each ends in one clear error within seconds and bounded memory.

Every loader runs in a child process under RLIMIT_AS (2 GiB) with a timeout, so a file that would hang the loader,
recurse without end or allocate gigabytes fails its test instead of taking the machine down. The crafted files are a
few hundred bytes to a few MB, written here by a small pickle writer (no torch needed).
"""
import io
import json
import pickle
import resource
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from tests.helpers import REPO, TINY_RESMLP, env, resmlp_main

MEM_LIMIT = 2 << 30
SECONDS = 5  # what a refusal may take, imports excluded


# --------------------------------------------------------------------------------------------------------------
# Running a loader in a limited child

_CHILD = r"""
import sys, time
import importlib
module, func = sys.argv[1].rsplit(".", 1)
load = getattr(importlib.import_module(module), func)
start = time.time()
try:
    result = load(sys.argv[2])
except BaseException as e:
    print("RESULT", type(e).__name__, " ".join(str(e).split()))
else:
    print("RESULT ok", type(result).__name__)
print("SECONDS", time.time() - start)
"""


def _limit_memory(nbytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
    return apply


def load_in_child(loader, path, timeout=60, mem=MEM_LIMIT):
    """(result line, seconds) of `loader(path)` run in a child limited to `mem` bytes of address space."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, loader, str(path)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory(mem))
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if " " in ln}
    assert "RESULT" in lines, f"the loader died (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return lines["RESULT"], float(lines["SECONDS"])


def assert_refused(loader, path, error, *fragments, seconds=SECONDS):
    result, took = load_in_child(loader, path)
    assert result.startswith(error + " "), f"expected {error}, got: {result[:500]}"
    for fragment in fragments:
        assert fragment in result, f"'{fragment}' not in: {result[:500]}"
    assert took < seconds, f"took {took:.1f}s: {result[:200]}"
    return result


PADDLE = "common.safe_pickle.load_paddle_file"
CHECKPOINT = "common.checkpoint.read_checkpoint"
TORCH = "common.porting.reader.read_torch_checkpoint"
SAFETENSORS = "common.porting.reader.read_safetensors"


# --------------------------------------------------------------------------------------------------------------
# A small writer of crafted pickles

class Global:
    """Written as the global `module.name`."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only writes callables as the function of a reduce
        raise AssertionError("never called")


class Reduce:
    """Written as `func(*args)`, then BUILD with `state` when given."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class Pid:
    """Written as a persistent id (how torch names storages)."""

    def __init__(self, *parts):
        self.parts = parts


class _Pickler(pickle._Pickler):
    def persistent_id(self, obj):
        return obj.parts if isinstance(obj, Pid) else None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def dumps(obj, protocol=2):
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _u8(i):
    return bytes([i])


def laughs_pickle(levels=60):
    """A list holding the previous list twice, `levels` deep, through the memo: ~10 bytes a level, 2**levels leaves
    for a naive walk."""
    out = b"\x80\x02]q\x000"
    for i in range(1, levels + 1):
        out += b"]q" + _u8(i) + b"(h" + _u8(i - 1) + b"h" + _u8(i - 1) + b"e0"
    return out + b"h" + _u8(levels) + b"."


def deep_pickle(depth=100_000):
    """`depth` lists, each inside the previous one ([[[...]]]): EMPTY_LIST x depth, then APPEND x (depth - 1)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def tensor(key, numel, size, stride, offset=0, storage="FloatStorage"):
    pid = Pid("storage", Global("torch", storage), key, "cpu", numel)
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                  (pid, offset, tuple(size), tuple(stride), False, Reduce(Global("collections", "OrderedDict"), ())))


def write_torch_zip(path, data_pkl, records=(), compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in records:
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")
    return path


def write_safetensors(path, header, data=b""):
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    return path


BYTEARRAY_BOMB = b"\x80\x02c__builtin__\nbytearray\n\x8a\x05" + (3_000_000_000).to_bytes(5, "little") + b"\x85R."


# --------------------------------------------------------------------------------------------------------------
# 1. Walking what was loaded: linear, no recursion

def test_billion_laughs_pickle_is_refused_in_linear_time(tmp_path):
    data = laughs_pickle(60)
    assert len(data) < 700
    path = tmp_path / "laughs.pdparams"
    path.write_bytes(data)
    assert_refused(PADDLE, path, "CheckpointFormatError", "laughs.pdparams", "expands to more than")


def test_shared_references_load_once_and_stay_shared(tmp_path):
    """A modest shared structure (2**12 leaves) loads, and the copy shares its parts like the file did."""
    from common.safe_pickle import load_paddle_file
    path = tmp_path / "shared.pdparams"
    path.write_bytes(laughs_pickle(12))
    start = time.time()
    got = load_paddle_file(str(path))
    assert time.time() - start < 1
    assert got[0] is got[1] and got[0][0] is got[0][1]


def test_deep_nesting_is_refused_without_recursion_error(tmp_path):
    path = tmp_path / "deep.pdparams"
    path.write_bytes(deep_pickle(100_000))
    result = assert_refused(PADDLE, path, "CheckpointFormatError", "deep.pdparams", "nests too deeply")
    assert "Recursion" not in result


@pytest.mark.parametrize("data, what", [
    (b"\x80\x02]q\x00h\x00a.", "list"),                    # l = [l]
    (b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.", "dict"),   # d = {'a': d}
], ids=["list", "dict"])
def test_self_referencing_container_is_refused(tmp_path, data, what):
    path = tmp_path / "cycle.pdparams"
    path.write_bytes(data)
    assert_refused(PADDLE, path, "CheckpointFormatError", f"a {what} in the data refers to itself")


def test_torch_reader_walk_is_iterative_too(tmp_path):
    deep = write_torch_zip(tmp_path / "deep.pt", deep_pickle(50_000))
    assert_refused(TORCH, deep, "CheckpointFormatError", "deep.pt", "nests too deeply")
    cycle = write_torch_zip(tmp_path / "cycle.pt", b"\x80\x02]q\x00h\x00a.")
    assert_refused(TORCH, cycle, "CheckpointFormatError", "refers to itself")


def test_tuple_bomb_as_dict_key_is_refused_before_hashing(tmp_path):
    """A tuple of shared tuples, 60 levels, hashes in 2**60 steps: refused before it is used as a key."""
    out = b"\x80\x02)q\x000"
    for i in range(1, 61):
        out += b"h" + _u8(i - 1) + b"h" + _u8(i - 1) + b"\x86q" + _u8(i) + b"0"
    path = tmp_path / "hash.pdparams"
    path.write_bytes(out + b"}h" + _u8(60) + b"Ns.")
    assert_refused(PADDLE, path, "UnsafePickleError", "hash.pdparams", "dict key or set element")


# --------------------------------------------------------------------------------------------------------------
# 2. Allocation bounded by the bytes present

def test_bytearray_of_a_size_is_refused(tmp_path):
    path = tmp_path / "ba.pdparams"
    path.write_bytes(BYTEARRAY_BOMB)
    assert path.stat().st_size < 64
    assert_refused(PADDLE, path, "UnsafePickleError", "ba.pdparams", "bytearray", "int 3000000000")


def test_bytearray_of_data_still_loads():
    from common.safe_pickle import restricted_loads
    data = {"b": bytearray(b"\x00ab")}
    for proto in (2, 3, 4, 5):
        assert restricted_loads(pickle.dumps(data, protocol=proto)) == data


def test_numpy_reconstruct_of_a_huge_shape_is_refused(tmp_path):
    obj = Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (10 ** 10,), b"b"))
    path = tmp_path / "rec.pdparams"
    path.write_bytes(dumps(obj))
    assert_refused(PADDLE, path, "UnsafePickleError", "numpy._reconstruct", "no data behind them")


def test_numpy_object_array_without_its_elements_is_refused(tmp_path):
    """numpy's setstate allocates an object array's shape before reading its (here empty) list."""
    dtype = Reduce(Global("numpy", "dtype"), ("O8", False, True))
    obj = Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                 (1, (10 ** 9,), dtype, False, []))
    path = tmp_path / "objarr.pdparams"
    path.write_bytes(dumps(obj))
    assert_refused(PADDLE, path, "UnsafePickleError", "without its 1000000000 elements")


def test_numpy_array_with_less_data_than_its_shape_is_refused(tmp_path):
    dtype = Reduce(Global("numpy", "dtype"), ("f4", False, True))
    obj = Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                 (1, (10 ** 9,), dtype, False, b"\x00" * 8))
    path = tmp_path / "short.pdparams"
    path.write_bytes(dumps(obj))
    assert_refused(PADDLE, path, "UnsafePickleError", "needs 4000000000 bytes; the file holds 8")


def test_numpy_scalar_without_its_bytes_is_refused(tmp_path):
    dtype = Reduce(Global("numpy", "dtype"), ("V2000000000", False, True))
    path = tmp_path / "scalar.pdparams"
    path.write_bytes(dumps(Reduce(Global("numpy.core.multiarray", "scalar"), (dtype,))))
    assert_refused(PADDLE, path, "UnsafePickleError", "numpy.scalar", "without its 2000000000 bytes")


def test_huge_memo_index_does_not_allocate(tmp_path):
    """LONG_BINPUT 2**31 makes the C unpickler size its memo table to 2**32 entries (32 GiB); ours loads in no time."""
    path = tmp_path / "memo.pdparams"
    path.write_bytes(b"\x80\x02Nr" + (2 ** 31).to_bytes(4, "little") + b".")
    result, took = load_in_child(PADDLE, path)
    assert result == "ok NoneType" and took < SECONDS, result


def test_copying_one_object_over_and_over_is_refused(tmp_path):
    """4 MB of bytes in the file, copied 1000 times by bytearray(): 4 GB from a 4 MB file."""
    out = b"\x80\x02c__builtin__\nbytearray\nq\x01B" + struct.pack("<I", 4 << 20) + b"\x00" * (4 << 20)
    out += b"\x85q\x02("  # memo 2: the argument tuple (the bytes)
    out += b"h\x01h\x02R" * 1000
    out += b"l."
    path = tmp_path / "copies.pdparams"
    path.write_bytes(out)
    assert_refused(PADDLE, path, "UnsafePickleError", "out of proportion")


def test_stride_zero_view_larger_than_its_storage_is_refused(tmp_path):
    obj = dumps({"w": tensor("0", 1, (10 ** 9,), (0,))})
    path = write_torch_zip(tmp_path / "expand.pt", obj, [("0", np.ones(1, "<f4").tobytes())])
    assert_refused(TORCH, path, "CheckpointFormatError", "expand.pt", "storage '0' holds only 1")


def test_many_views_of_one_storage_are_refused(tmp_path):
    """600 tensors that each view a whole 4 MB storage: 2.4 GB of copies from a 4 MB file."""
    numel = 1 << 20
    obj = dumps({f"w{i}": tensor("0", numel, (numel,), (1,)) for i in range(600)})
    path = write_torch_zip(tmp_path / "views.pt", obj, [("0", np.zeros(numel, "<f4").tobytes())])
    assert_refused(TORCH, path, "CheckpointFormatError", "views.pt", "out of proportion", "storage '0'")


def test_storage_larger_than_its_record_is_refused(tmp_path):
    obj = dumps({"w": tensor("0", 10 ** 12, (4,), (1,))})
    path = write_torch_zip(tmp_path / "claims.pt", obj, [("0", np.ones(4, "<f4").tobytes())])
    assert_refused(TORCH, path, "CheckpointFormatError", "claims.pt", "claims 1000000000000 elements",
                   "record holds 16 bytes")


def test_zip_bombs_are_refused_before_reading(tmp_path):
    # data.pkl: 100 MB of zeros that deflate to ~100 KB
    bomb = write_torch_zip(tmp_path / "pkl_bomb.pt", b"\x00" * (100 << 20), compress=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < (1 << 20)
    assert_refused(TORCH, bomb, "CheckpointFormatError", "archive/data.pkl", "zip bomb")
    # a storage record the same way
    numel = 25 << 20
    obj = dumps({"w": tensor("0", numel, (numel,), (1,))})
    bomb = write_torch_zip(tmp_path / "record_bomb.pt", obj, [("0", b"\x00" * (numel * 4))],
                           compress=zipfile.ZIP_DEFLATED)
    assert_refused(TORCH, bomb, "CheckpointFormatError", "archive/data/0", "zip bomb")


def test_many_small_compressed_records_count_together(tmp_path):
    """20 records of 4 MB of zeros (~4 KB each deflated): each under the per-member floor, 80 MB together."""
    numel = 1 << 20
    obj = dumps({f"w{i}": tensor(str(i), numel, (numel,), (1,)) for i in range(20)})
    zeros = b"\x00" * (numel * 4)
    path = write_torch_zip(tmp_path / "records.pt", obj, [(str(i), zeros) for i in range(20)],
                           compress=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < (1 << 20)
    assert_refused(TORCH, path, "CheckpointFormatError", "records.pt", "over-compressed members", "zip bomb")


def test_legacy_storage_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    numel = 10 ** 12
    pid = Pid("storage", Global("torch", "FloatStorage"), "0", "cpu", numel, None)
    obj = Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                 (pid, 0, (4,), (1,), False, Reduce(Global("collections", "OrderedDict"), ())))
    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))
        f.write(dumps({"w": obj}))
        f.write(pickle.dumps(["0"], protocol=2))
        f.write(struct.pack("<q", numel) + np.ones(4, "<f4").tobytes())
    assert_refused(TORCH, path, "CheckpointFormatError", "legacy.pt", "truncated inside storage '0'")


# --------------------------------------------------------------------------------------------------------------
# 3. safetensors headers

GOOD = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("entry, fragment", [
    ({**GOOD, "dtype": ["F32"]}, "dtype ['F32'] is not a string"),
    ({**GOOD, "dtype": 5}, "dtype 5 is not a string"),
    ({**GOOD, "shape": [True, 2]}, "shape [True, 2] is not a list of whole numbers"),
    ({**GOOD, "shape": [2.0]}, "shape [2.0] is not a list"),
    ({**GOOD, "shape": "2"}, "shape '2' is not a list"),
    ({**GOOD, "shape": [-2]}, "shape [-2] is not a list"),
    ({**GOOD, "data_offsets": [0.0, 8.0]}, "data_offsets [0.0, 8.0] is not a list of two whole numbers"),
    ({**GOOD, "data_offsets": [False, 8]}, "data_offsets [False, 8]"),
    ({**GOOD, "data_offsets": [0, 8, 9]}, "data_offsets [0, 8, 9]"),
    ({**GOOD, "shape": [2 ** 62, 2 ** 62], "data_offsets": [0, 0]}, "more than the whole data section"),
    ({"dtype": "F32", "shape": [2]}, "is malformed"),
])
def test_bad_safetensors_entries_are_named(tmp_path, entry, fragment):
    path = write_safetensors(tmp_path / "bad.safetensors", {"w.bad": entry}, b"\x00" * 8)
    result = assert_refused(SAFETENSORS, path, "CheckpointFormatError", "bad.safetensors", fragment)
    assert "w.bad" in result


@pytest.mark.parametrize("metadata", [["a"], {"a": 1}, "text"])
def test_safetensors_metadata_must_map_text_to_text(tmp_path, metadata):
    path = write_safetensors(tmp_path / "meta.safetensors", {"__metadata__": metadata, "w": GOOD}, b"\x00" * 8)
    assert_refused(SAFETENSORS, path, "CheckpointFormatError", "__metadata__")


def test_overlapping_safetensors_entries_are_refused(tmp_path):
    """Entries sharing bytes would let a small file stand for many copies of its data."""
    header = {f"w{i}": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]} for i in range(3)}
    path = write_safetensors(tmp_path / "overlap.safetensors", header, b"\x00" * (4 << 20))
    assert_refused(SAFETENSORS, path, "CheckpointFormatError", "overlap")


def test_good_safetensors_with_metadata_still_loads(tmp_path):
    from common.porting.reader import read_safetensors
    path = write_safetensors(tmp_path / "ok.safetensors",
                             {"__metadata__": {"format": "pt"}, "a": GOOD,
                              "b": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
                              "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [16, 16]}},
                             np.arange(2, dtype="<f4").tobytes() + np.int64(7).tobytes())
    got, meta = read_safetensors(str(path), return_metadata=True)
    assert meta == {"format": "pt"} and got["b"] == 7 and got["e"].shape == (0, 3)
    np.testing.assert_array_equal(got["a"], [0, 1])


# --------------------------------------------------------------------------------------------------------------
# 4. YAML configs

def alias_bomb(levels=27):
    """~950 bytes: each anchor a list of 9 copies of the previous one, 9**27 scalars when expanded."""
    names = "abcdefghijklmnopqrstuvwxyzA"[:levels]
    lines = [f"{names[0]}: &{names[0]} [x,x,x,x,x,x,x,x,x]"]
    for prev, name in zip(names, names[1:]):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


_MERGE_CHILD = r"""
import sys, time
from common.config import get_default_config, merge_yaml
start = time.time()
try:
    merge_yaml(get_default_config(), sys.argv[1])
except BaseException as e:
    print("RESULT", type(e).__name__, " ".join(str(e).split()))
else:
    print("RESULT ok")
print("SECONDS", time.time() - start)
"""


def merge_in_child(path, timeout=60):
    proc = subprocess.run([sys.executable, "-c", _MERGE_CHILD, str(path)], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=_limit_memory(MEM_LIMIT))
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if " " in ln}
    assert "RESULT" in lines, proc.stderr[-3000:]
    return lines["RESULT"], float(lines["SECONDS"])


def test_yaml_alias_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 1000
    result, took = merge_in_child(path)
    assert result.startswith("ConfigError ") and "bomb.yaml" in result and "aliases" in result, result
    assert took < SECONDS


def test_yaml_deep_and_recursive_documents_are_refused(tmp_path):
    from common.config import ConfigError, _read_yaml
    deep = tmp_path / "deep.yaml"
    deep.write_text("A: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml: the document nests too deeply"):
        _read_yaml(str(deep))
    rec = tmp_path / "rec.yaml"
    rec.write_text("A: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=r"rec.yaml: alias \*a refers to the node that contains it"):
        _read_yaml(str(rec))


def test_yaml_with_a_few_aliases_still_works(tmp_path):
    from common.config import get_default_config, merge_yaml
    path = tmp_path / "ok.yaml"
    path.write_text("DATA:\n  MEAN: &m [0.5, 0.5, 0.5]\n  STD: *m\n"
                    "TRAIN: &t\n  EPOCHS: 7\n"
                    "MODEL:\n  NAME: resmlp_12_224\n")
    cfg = merge_yaml(get_default_config(), str(path))
    assert list(cfg.DATA.STD) == [0.5, 0.5, 0.5] and cfg.TRAIN.EPOCHS == 7


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    from common.config import ConfigError, _read_yaml
    path = tmp_path / "syntax.yaml"
    path.write_text("DATA:\n  BATCH_SIZE: 8\nTRAIN: [1, 2\nMODEL: {}\n")
    with pytest.raises(ConfigError, match=r"syntax.yaml: invalid YAML at line 4, column \d+"):
        _read_yaml(str(path))


def test_non_utf8_config_names_the_file(tmp_path):
    from common.config import ConfigError, _read_yaml
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"MODEL:\n  NAME: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text \(byte 0xe9 on line 2\)"):
        _read_yaml(str(path))


# --------------------------------------------------------------------------------------------------------------
# 6. Through the real command lines

def run_limited(args, timeout=180):
    proc = subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit_memory(6 << 30))
    return proc


def assert_cli_error(proc, code, *fragments):
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr[-3000:]


def port_cli(src, dst):
    return [sys.executable, "-m", "common.port", "--model", "resmlp_12_224", "--src", str(src), "--dst", str(dst)]


@pytest.mark.parametrize("make, fragment", [
    (lambda d: write_torch_zip(d / "deep.pt", deep_pickle(50_000)), "nests too deeply"),
    (lambda d: write_torch_zip(d / "ba.pt", BYTEARRAY_BOMB), "bytearray"),
    (lambda d: write_safetensors(d / "st.safetensors", {"w": {**GOOD, "shape": [True, 2]}}, b"\x00" * 8),
     "shape [True, 2]"),
], ids=["deep-zip", "bytearray-zip", "safetensors"])
def test_port_cli_refuses_hostile_sources(tmp_path, make, fragment):
    """The port CLI's documented status for a source that cannot be ported is 1 (common/port.py)."""
    src = make(tmp_path)
    start = time.time()
    proc = run_limited(port_cli(src, tmp_path / "out.pdparams"))
    assert_cli_error(proc, 1, fragment, src.name)
    assert time.time() - start < 60 and not (tmp_path / "out.pdparams").exists()


def resmlp_eval(small_demo, out, *extra):
    return resmlp_main("-cfg", "configs/resmlp/demo.yaml", "-eval", "-data_path", small_demo, "-output", str(out),
                       *extra, "-opts", *TINY_RESMLP)


@pytest.mark.parametrize("name, make, fragment", [
    ("laughs.pdparams", lambda: laughs_pickle(60), "expands to more than"),
    ("deep.pdparams", lambda: deep_pickle(100_000), "nests too deeply"),
    ("ba.pdparams", lambda: BYTEARRAY_BOMB, "refusing 'builtins.bytearray'"),
], ids=["laughs", "deep", "bytearray"])
def test_train_cli_refuses_hostile_pretrained(tmp_path, small_demo, name, make, fragment):
    bad = tmp_path / name
    bad.write_bytes(make())
    proc = run_limited(resmlp_eval(small_demo, tmp_path / "out", "-pretrained", str(bad)))
    assert_cli_error(proc, 2, fragment, name)


def test_train_cli_refuses_yaml_alias_bomb(tmp_path, small_demo):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("MODEL:\n  NAME: resmlp_12_224\n" + alias_bomb())
    args = resmlp_main("-cfg", str(cfg), "-eval", "-data_path", small_demo, "-output", str(tmp_path / "out"))
    proc = run_limited(args, timeout=120)
    assert_cli_error(proc, 2, "bomb.yaml", "aliases")
