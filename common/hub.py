"""Published weights by name: ``-pretrained timm/resmlp_24_224.fb_distilled_in1k`` (or any name of
``common/hub_table.py``) is downloaded once, verified, ported with the model's registered rules and cached.

    python -m common.hub --list          # which published names load into which suite model

Cache folder: ``$SUITE_CACHE`` (default ``~/.cache/paddle-fg-suite``):

* ``downloads/timm/<repo>/model.safetensors``, ``downloads/torchvision/<file>``: the source files. A file placed
  there by hand (e.g. on a machine without network) is used, after the same checks.
* ``ported/<source>/<name>--<port spec>.pdparams``: what ``load_pretrained`` reads. Once it exists no request is made.

Hosts: ``$SUITE_HUB_ENDPOINT`` (default https://huggingface.co) for ``timm/`` names, ``$SUITE_TORCHVISION_ENDPOINT``
(default https://download.pytorch.org) for ``torchvision/`` names.
"""
import argparse
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request

from common.errors import SuiteError
from common.outdir import atomic_write
from common.hub_table import hub_table

__all__ = ["HubError", "is_published_name", "lookup", "source_url", "download_path", "ported_path", "resolve",
           "is_foreign_checkpoint", "port_local"]

DEFAULT_CACHE = os.path.join("~", ".cache", "paddle-fg-suite")
DEFAULT_HUB = "https://huggingface.co"
DEFAULT_TORCHVISION = "https://download.pytorch.org"
PREFIXES = ("timm/", "torchvision/")
TIMEOUT_S = 30
CHUNK = 1 << 20


class HubError(SuiteError):
    """A published name that cannot be used: unknown, not for this model, unreachable, or failing its checks."""


def is_published_name(value):
    """True for a value spelled like a published name (``timm/...``, ``torchvision/...``) that is not a path."""
    return (isinstance(value, str) and value.startswith(PREFIXES) and not os.path.exists(value)
            and not os.path.exists(value + ".pdparams"))


def cache_dir():
    return os.path.abspath(os.path.expanduser(os.environ.get("SUITE_CACHE") or DEFAULT_CACHE))


def lookup(name):
    table = hub_table()
    entry = table.get(name)
    if entry is None:
        source = name.split("/", 1)[0]
        same = sorted(n for n in table if n.startswith(source + "/"))
        raise HubError(f"'{name}' is not a published name this suite knows (python -m common.hub --list); known "
                       f"{source} names: {', '.join(same) or '(none)'}. A local file is given by its path")
    return entry


def source_url(name):
    entry = lookup(name)
    if entry["source"] == "timm":
        host = os.environ.get("SUITE_HUB_ENDPOINT") or DEFAULT_HUB
        return f"{host.rstrip('/')}/timm/{entry['repo']}/resolve/main/{entry['file']}"
    host = os.environ.get("SUITE_TORCHVISION_ENDPOINT") or DEFAULT_TORCHVISION
    return f"{host.rstrip('/')}/models/{entry['file']}"


def download_path(name):
    """Where the source file is cached (and where a file downloaded by hand can be placed)."""
    entry = lookup(name)
    if entry["source"] == "timm":
        return os.path.join(cache_dir(), "downloads", "timm", entry["repo"], entry["file"])
    return os.path.join(cache_dir(), "downloads", "torchvision", entry["file"])


def _choose(name, entry, model_name=None, method=None):
    """The table's (method, model, port spec, allow-missing) row for the model (the first row when not named)."""
    rows = entry["models"]
    if model_name is None:
        fitting = [r for r in rows if method in (None, r[0])] or rows
        return fitting[0]
    for row in rows:
        if row[1] == model_name and (method in (None, "") or row[0] is None or row[0] == method):
            return row
    loads = ", ".join(sorted({f"{r[1]} ({r[0]})" for r in rows}))
    raise HubError(f"published weights '{name}' do not fit model '{model_name}'"
                   f"{f' ({method})' if method else ''}: they load into {loads}")


def ported_path(name, spec_name):
    source, rest = name.split("/", 1)
    return os.path.join(cache_dir(), "ported", source, f"{rest}--{spec_name}.pdparams")


def check_name(name, model_name=None, method=None):
    """Validate a published name for a model without touching the network; returns the chosen table row."""
    return _choose(name, lookup(name), model_name, method)


def _human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0


class _Progress:
    def __init__(self, url, total, out=None, every=0.5):
        self.url, self.total, self.out, self.every = url, total, out or sys.stderr, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n, final=False):
        self.done += n
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        speed = self.done / max(now - self.start, 1e-6)
        if self.total:
            eta = (self.total - self.done) / speed if speed > 0 else float("inf")
            text = (f"{_human(self.done)} / {_human(self.total)} ({100.0 * self.done / self.total:.0f}%), "
                    f"{_human(speed)}/s, ETA {eta:.0f} s")
        else:
            text = f"{_human(self.done)}, {_human(speed)}/s"
        print(f"download {os.path.basename(self.url)}: {text}", file=self.out, flush=True)


def _verify(path, entry, what, digest=None):
    """Size and hash checks of the table entry; raises HubError naming expected and actual values."""
    size = os.path.getsize(path)
    if entry.get("size") is not None and size != entry["size"]:
        raise HubError(f"{what}: size {size} bytes, expected {entry['size']}")
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        digest = h.hexdigest()
    if entry.get("sha256") and digest != entry["sha256"].lower():
        raise HubError(f"{what}: SHA-256 {digest} does not match the expected {entry['sha256']}")
    prefix = entry.get("sha256_prefix")
    if prefix and not digest.startswith(prefix.lower()):
        raise HubError(f"{what}: SHA-256 {digest} does not start with the published prefix {prefix}")
    return digest


def _download(name, url, dest, log):
    entry = lookup(name)
    request = urllib.request.Request(url, headers={"User-Agent": "paddle-fg-suite"})
    offline = (f"cannot download {url}: {{reason}}. Without network, download that file by hand and place it at "
               f"{dest}; it is then verified and ported (hosts: SUITE_HUB_ENDPOINT / SUITE_TORCHVISION_ENDPOINT)")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise HubError(offline.format(reason=f"HTTP {e.code} {e.reason}")) from None
    except (urllib.error.URLError, OSError) as e:
        raise HubError(offline.format(reason=getattr(e, "reason", None) or e)) from None
    log(f"downloading {name} from {url} to {dest}")

    def fetch_and_verify(tmp):      # a failure here leaves nothing in the cache (common.outdir.atomic_write)
        h = hashlib.sha256()
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            progress = _Progress(url, total or entry.get("size"))
            with open(tmp, "wb") as f:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as e:  # IncompleteRead, a reset connection
                        raise HubError(offline.format(reason=f"the connection broke after {progress.done} bytes "
                                                      f"({type(e).__name__}: {e})")) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    h.update(chunk)
                    progress.update(len(chunk))
            progress.update(0, final=True)
            if total is not None and progress.done != total:
                raise HubError(f"{url}: download truncated: got {progress.done} bytes, the server announced {total}; "
                               f"nothing was cached")
        _verify(tmp, entry, f"{url} (downloaded)", digest=h.hexdigest())
    atomic_write(dest, fetch_and_verify)
    return dest


def _port(name, spec_name, allow_missing, src, dst, log):
    from common.checkpoint import atomic_save
    from common.port import discover_specs, port_file
    registry, _, errors = discover_specs()
    if spec_name not in registry:
        raise HubError(f"'{name}' loads into '{spec_name}', which no method folder defines"
                       + (f" (could not load: {', '.join(errors)})" if errors else ""))
    ported, report = port_file(registry[spec_name], src, allow_missing=allow_missing, log=log)[:2]
    log(report.summary())
    atomic_save(ported, dst)
    log(f"cached {dst} ({len(ported)} tensors, {name} ported for {spec_name})")
    return dst


class _Lock:
    """An exclusive lock on `<path>.lock` (several processes of one run ask for the same file: one downloads and
    ports, the others then find the cached result)."""

    def __init__(self, path):
        self.path = path + ".lock"

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.f = open(self.path, "a")
        try:
            import fcntl
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):   # no flock (Windows, some network file systems): work unlocked
            pass
        return self

    def __exit__(self, *exc):
        self.f.close()   # closing releases the lock
        return False


def resolve(name, model_name=None, method=None, log=None):
    """The cached ``.pdparams`` of published weights `name` for `model_name` (MODEL.NAME; the table's first model
    when None): ported from the cached download, downloaded first when needed."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    entry = lookup(name)
    _, _, spec_name, allow_missing = _choose(name, entry, model_name, method)
    dst = ported_path(name, spec_name)
    if os.path.isfile(dst):
        return dst
    with _Lock(dst):
        if os.path.isfile(dst):   # another process made it meanwhile
            return dst
        src = download_path(name)
        if os.path.isfile(src):
            log(f"using {src} (found in the cache) for {name}")
            try:
                _verify(src, entry, src)
            except HubError as e:
                raise HubError(f"{e}; delete or replace that file") from None
        else:
            _download(name, source_url(name), src, log)
        return _port(name, spec_name, list(allow_missing), src, dst, log)


FOREIGN_FORMATS = ("torch_zip", "torch_legacy", "safetensors")


def is_foreign_checkpoint(path):
    """True for an existing PyTorch (.pth/.pt/.bin) or safetensors file: ported on the fly by `port_local`."""
    if not (isinstance(path, str) and path and os.path.isfile(path)):
        return False
    from common.porting.reader import checkpoint_format
    try:
        return checkpoint_format(path) in FOREIGN_FORMATS
    except (OSError, ValueError):
        return False


def _local_specs(model_name, method=None):
    """The port specs that may fit MODEL.NAME `model_name` of `method`, most specific first: the registry's entries
    for it (e.g. PIM's paper model), the name itself, then PIM's backbone-only spec."""
    from common import models
    from common.port import discover_specs
    registry, origin, _ = discover_specs()
    candidates = [m.name for m in models.find_models(model_name, method or None)] + [
        model_name, f"pim_backbone_{model_name}"]
    found = [registry[n] for n in dict.fromkeys(candidates)
             if n in registry and (not method or origin[n] == f"{method}.port_weights")]
    if not found:
        raise HubError(f"no port rules for model '{model_name}'{f' ({method})' if method else ''}: convert the file "
                       f"with python -m common.port --model NAME --src FILE --dst out.pdparams (see --list)")
    return found, [s for n, s in registry.items() if not method or origin[n] == f"{method}.port_weights"]


def _as_built_spec(model, model_name, method_specs):
    """A spec for the model exactly as the config built it (its sizes, FPN, class count...), with every source
    layout the method knows: an authors' full checkpoint (PIM's best.pt, Dynamic MLP's iNat21 models) ports for
    any config whose model it fits, not only for the registered default."""
    from common.porting.spec import PortSpec
    shapes = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:10]
    flavours = list({f.name: f for s in method_specs for f in s.flavours}.values())
    return PortSpec(name=f"{model_name}-{digest}", build_model=lambda **kw: model, flavours=flavours,
                    description=f"{model_name} as configured")


def port_local(path, model_name, method=None, log=None, model=None):
    """A local PyTorch / safetensors file ported for `model_name` (with `model`: for that model as built) with the
    registered rules and cached (key: the file's absolute path, size and modification time, and the spec); returns
    the cached ``.pdparams``. Specs are tried most specific first; backbone-only weights for a model with parts of
    its own (ImageNet weights for PIM, the Dynamic MLP) leave those parts to the model."""
    from common.checkpoint import atomic_save
    from common.port import port_file
    from common.porting.rules import PortError
    log = log or (lambda msg: print(msg, file=sys.stderr))
    specs, method_specs = _local_specs(model_name, method)
    if model is not None:
        specs = [_as_built_spec(model, model_name, method_specs)] + specs
    st = os.stat(path)
    src = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(src))[0]

    def cached(spec):
        key = hashlib.sha256(f"{src}|{st.st_size}|{st.st_mtime_ns}|{spec.name}".encode()).hexdigest()[:16]
        return os.path.join(cache_dir(), "local", f"{stem}-{key}--{spec.name}.pdparams")
    for spec in specs:
        if os.path.isfile(cached(spec)):
            log(f"pretrained {path}: using its port cached at {cached(spec)}")
            return cached(spec)

    def port_to_cache(spec, allow=()):
        dst = cached(spec)
        with _Lock(dst):
            if not os.path.isfile(dst):
                ported, report = port_file(spec, src, allow_missing=allow, log=lambda m: None)[:2]
                log(report.summary())
                atomic_save(ported, dst)
                log(f"pretrained {path}: ported for {spec.name} and cached at {dst}")
        return dst
    first_error = None
    for spec in specs:
        try:
            return port_to_cache(spec)
        except (PortError, ValueError) as e:       # ValueError: no layout of the spec recognises the keys
            first_error = first_error or e
    # nothing fits whole: backbone weights, the model's own parts (as the published names list them) left to it
    backbone = specs[-1]
    allow = sorted({p for e in hub_table().values() for _, _, sn, am in e["models"] if sn == backbone.name
                    for p in am})
    if not allow:
        raise first_error
    log(f"pretrained {path}: the file does not fill {', '.join(allow)}; porting the rest")
    try:
        return port_to_cache(backbone, allow)
    except (PortError, ValueError):
        raise first_error from None


def print_list(out=sys.stdout):
    print(f"published weights (-pretrained NAME; cache {cache_dir()}):", file=out)
    table = hub_table()
    for name in sorted(table):
        entry = table[name]
        models = ", ".join(f"{m} ({meth})" for meth, m, _, _ in entry["models"])
        print(f"  {name:48s} -> {models}", file=out)
        print(f"  {'':48s}    {entry['hash_note']}" + (f"; {entry['note']}" if entry.get("note") else ""),
              file=out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m common.hub",
                                description="Published weights that -pretrained accepts by name.")
    p.add_argument("--list", action="store_true", help="list the published names and the models they load into")
    p.add_argument("--get", metavar="NAME", help="download, verify, port and cache NAME; print the cached path")
    p.add_argument("--model", default=None, help="with --get: the suite model (MODEL.NAME) to port for")
    args = p.parse_args(argv)
    if args.get:
        print(resolve(args.get, model_name=args.model))
        return 0
    print_list()
    return 0


if __name__ == "__main__":
    from common.errors import run_entry
    sys.exit(run_entry(main))
