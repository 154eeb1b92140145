"""One registry of every model of every method, and the Python door to it.

    from common.models import create_model, list_models
    model = create_model("resmlp_24_224", pretrained="timm/resmlp_24_224.fb_in1k")
    model = create_model("pim_swin_tiny_patch4_window7_224", num_classes=200)
    print(list_models("resmlp_*"))

    python -m common.models [PATTERN] [--method M]     # name, method, parameters, input size, weights, in columns

A model registers itself where it is defined (`register_model` in its method's model module: name, method, the
MODEL.NAME it builds, default input size, eval crop / interpolation). Methods are found, not listed: a method is a
folder beside ``common/`` (or in a folder named by SUITE_METHOD_PATH, several separated by ``:``) holding
``__init__.py``, ``main_multi_gpu.py`` and ``method.py`` with a ``ClassificationMethod`` subclass whose ``name`` is
the folder's name; importing ``<folder>.method`` imports its model module(s), whose ``register_model`` calls fill
the registry; its ``port_weights.py`` (if any) gives the porting rules (``PORT_SPECS``); ``common/hub_table.py`` the
published weights. ``common`` imports no method folder by name: the launcher, ``common.port``, ``common.hub``, the
benchmark and the tests all read this registry.
"""
import argparse
import difflib
import fnmatch
import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_METHODS = {"common", "tests", "configs", "bench"}


@dataclass(frozen=True)
class ModelInfo:
    name: str                      # the registry name (unique across methods)
    method: str                    # the method folder that builds it
    model_name: str                # what goes into MODEL.NAME
    image_size: int = 224          # default input size (square)
    crop_pct: float = 0.875        # eval: resize to image_size / crop_pct, center crop
    interpolation: str = "bicubic"
    num_classes: int = 1000        # the class count of the published weights / the method's default
    opts: object = None            # more config keys that build it ({"KEY.PATH": value}), or a function giving them
    description: str = ""


@dataclass
class MethodInfo:
    name: str
    folder: str                    # absolute path of the method folder
    cls: type                      # its ClassificationMethod subclass
    port_specs: dict = field(default_factory=dict)   # {port spec name: PortSpec} from port_weights.PORT_SPECS

    @property
    def script(self):
        return os.path.join(self.folder, "main_multi_gpu.py")


class UnknownModelError(KeyError):
    def __str__(self):
        return self.args[0] if self.args else ""


_MODELS = {}          # registry name -> ModelInfo
_METHODS = {}         # method name -> MethodInfo
_ERRORS = {}          # module -> why it could not be imported (one broken method must not hide the others)
_DISCOVERED = set()   # roots already scanned


def register_model(name, method, model_name=None, **info):
    """Register a model (called at import time of the module that defines it). Registering the same name twice
    with other facts is a bug of the method that does it."""
    entry = ModelInfo(name=name, method=method, model_name=model_name or name, **info)
    old = _MODELS.get(name)
    if old is not None and old != entry:
        raise ValueError(f"model name '{name}' is registered twice: by {old.method} and by {method}")
    _MODELS[name] = entry
    return entry


# -------------------------------------------------------------------------------------------------- discovery
def method_roots():
    """The repository root, then every folder of SUITE_METHOD_PATH."""
    extra = [os.path.abspath(p) for p in os.environ.get("SUITE_METHOD_PATH", "").split(os.pathsep) if p.strip()]
    return [REPO_ROOT] + [p for p in extra if p != REPO_ROOT]


def is_method_folder(path):
    name = os.path.basename(path)
    return (name.isidentifier() and not name.startswith(("_", ".")) and name not in NOT_METHODS
            and all(os.path.isfile(os.path.join(path, f)) for f in ("__init__.py", "main_multi_gpu.py", "method.py")))


def _method_class(module, name):
    from common.method import ClassificationMethod
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, ClassificationMethod) and c.__module__ == module.__name__ and c.name == name]
    return found[0] if len(found) == 1 else None


def _import_method(root, name):
    if root not in sys.path:
        sys.path.insert(0, root)
    modname = f"{name}.method"
    try:
        module = importlib.import_module(modname)
    except Exception as e:   # noqa: BLE001 - reported by name, the other methods still load
        _ERRORS[modname] = f"{type(e).__name__}: {e}"
        return
    cls = _method_class(module, name)
    if cls is None:
        _ERRORS[modname] = f"defines no ClassificationMethod subclass with name = '{name}'"
        return
    info = MethodInfo(name, os.path.join(root, name), cls)
    if os.path.isfile(os.path.join(root, name, "port_weights.py")):
        try:
            specs = getattr(importlib.import_module(f"{name}.port_weights"), "PORT_SPECS", None)
        except Exception as e:   # noqa: BLE001
            _ERRORS[f"{name}.port_weights"] = f"{type(e).__name__}: {e}"
            specs = {}
        if not isinstance(specs, dict):
            _ERRORS[f"{name}.port_weights"] = "defines no PORT_SPECS dict"
            specs = {}
        info.port_specs = dict(specs)
    _METHODS[name] = info


def discover():
    """Import every method folder of every root once (see the module's docstring)."""
    for root in method_roots():
        if root in _DISCOVERED or not os.path.isdir(root):
            continue
        _DISCOVERED.add(root)
        for entry in sorted(os.listdir(root)):
            if entry not in _METHODS and is_method_folder(os.path.join(root, entry)):
                _import_method(root, entry)


def discovery_errors():
    discover()
    return dict(_ERRORS)


# -------------------------------------------------------------------------------------------------- queries
def methods():
    """{method name: MethodInfo}."""
    discover()
    return dict(_METHODS)


def get_method(name):
    """A fresh method object of the method `name`."""
    found = methods().get(name)
    if found is None:
        raise UnknownModelError(f"unknown method '{name}'; known: {', '.join(sorted(_METHODS)) or 'none'}"
                                + _errors_hint())
    return found.cls()


def _errors_hint():
    return "".join(f" ({mod} could not be loaded: {why})" for mod, why in sorted(_ERRORS.items()))


def list_models(pattern="*", method=None):
    """Sorted registry names matching the shell-style `pattern` (and of `method`, if given)."""
    discover()
    return sorted(n for n, m in _MODELS.items()
                  if fnmatch.fnmatchcase(n, pattern) and (method is None or m.method == method))


def model_info(name):
    discover()
    if name in _MODELS:
        return _MODELS[name]
    close = [n for n in _MODELS if name.lower() in n.lower()] or difflib.get_close_matches(name, list(_MODELS), n=5)
    hint = f"; did you mean {', '.join(sorted(close)[:5])}?" if close else "; see python -m common.models"
    raise UnknownModelError(f"unknown model '{name}'{hint}{_errors_hint()}")


def find_models(model_name, method=None):
    """The registry entries that build MODEL.NAME `model_name` (of `method`, if given)."""
    discover()
    return [m for m in _MODELS.values() if m.model_name == model_name and (method is None or m.method == method)]


def method_of_model(model_name):
    """The one method whose registry builds MODEL.NAME `model_name`; None when none does; an error when several
    do (e.g. resnet50 is a transfer model and a PIM backbone: the config must say MODEL.METHOD)."""
    owners = sorted({m.method for m in find_models(model_name)})
    if len(owners) > 1:
        raise UnknownModelError(f"MODEL.NAME {model_name} is a model of {' and '.join(owners)}: say which with "
                                f"MODEL.METHOD")
    return owners[0] if owners else None


def port_specs():
    """{port spec name: (method, PortSpec)} of every method."""
    out = {}
    for method in methods().values():
        for spec_name, spec in method.port_specs.items():
            out.setdefault(spec_name, (method.name, spec))
    return out


def published_weights(info, table=None):
    """The published names (common/hub_table.py, or `table` as read from it) that load into registry entry `info`."""
    if table is None:
        from common.hub_table import hub_table
        table = hub_table()
    return sorted(name for name, entry in table.items()
                  if any(mn == info.model_name and meth in (None, info.method) for meth, mn, _, _ in entry["models"]))


# -------------------------------------------------------------------------------------------------- building
# timm's keyword names -> config keys, for create_model(**overrides)
KEYWORDS = {"drop_rate": "MODEL.DROPOUT", "drop_path_rate": "MODEL.DROPPATH", "in_chans": "DATA.IMAGE_CHANNELS",
            "img_size": "DATA.IMAGE_SIZE"}


def model_config(name, num_classes=None, image_size=None, opts=None, **overrides):
    """The method's config that builds registry model `name`, with the given class count, input size and config
    keys (`opts` {"KEY.PATH": value}; `overrides` by timm's keyword names: drop_rate, drop_path_rate, in_chans)."""
    from common.config import merge_opts
    info = model_info(name)
    unknown = sorted(set(overrides) - set(KEYWORDS))
    if unknown:
        raise TypeError(f"create_model() got unexpected keyword(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(KEYWORDS))}, or any config key through opts={{'KEY.PATH': value}}")
    config = get_method(info.method).get_config()
    values = {"MODEL.NAME": info.model_name, "MODEL.NUM_CLASSES": info.num_classes, "DATA.IMAGE_SIZE": info.image_size,
              "DATA.CROP_PCT": info.crop_pct, "DATA.INTERPOLATION": info.interpolation,
              **((info.opts() if callable(info.opts) else info.opts) or {})}
    values.update({KEYWORDS[k]: v for k, v in overrides.items()})
    if num_classes is not None:
        values["MODEL.NUM_CLASSES"] = num_classes
    if image_size is not None:
        values["DATA.IMAGE_SIZE"] = image_size
    values.update(opts or {})
    merge_opts(config, [x for k, v in values.items() for x in (k, v)])   # yacs checks each key and type
    config.freeze()
    return config


def create_model(name, num_classes=None, pretrained=None, image_size=None, opts=None, log=None, **overrides):
    """Build registry model `name` as its method's engine does (`method.build_model(config)`), in eval mode.
    `pretrained`: a .pdparams path, a PyTorch / safetensors file (ported with the model's rules), or a published
    name (``timm/...``, ``torchvision/...``: downloaded, verified, ported and cached; see common/hub.py). With a
    class count other than the weights', the classifier is kept as initialised (a new head)."""
    config = model_config(name, num_classes=num_classes, image_size=image_size, opts=opts, **overrides)
    method = get_method(model_info(name).method)
    model = method.build_model(config)
    if pretrained:
        from common.checkpoint import load_pretrained
        load_pretrained(model, pretrained, new_head=num_classes is not None, log=log or (lambda *a: None),
                        model_name=config.MODEL.NAME, method=config.MODEL.METHOD)
    model.eval()
    return model


def _source_digest(method):
    """A digest of the code that defines a method's models (its folder and common/), for the count cache."""
    import hashlib
    h = hashlib.sha1()
    for folder in (methods()[method].folder, os.path.join(REPO_ROOT, "common")):
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            for f in sorted(files):
                if f.endswith(".py"):
                    with open(os.path.join(root, f), "rb") as fh:
                        h.update(f.encode() + fh.read())
    return h.hexdigest()[:16]


class ParameterCounts:
    """Parameter counts cached in <SUITE_CACHE>/param_counts.json, keyed by the code that builds the model (building
    ~70 models to count them takes a minute on a small CPU; a listing afterwards is instant)."""

    def __init__(self):
        from common.hub import cache_dir
        self.path = os.path.join(cache_dir(), "param_counts.json")
        self.digests, self.changed = {}, False
        try:
            import json
            with open(self.path, encoding="utf-8") as f:
                self.cache = json.load(f)
            if not isinstance(self.cache, dict):
                self.cache = {}
        except (OSError, ValueError):
            self.cache = {}

    def get(self, name):
        method = model_info(name).method
        if method not in self.digests:
            self.digests[method] = _source_digest(method)
        key = f"{name}@{self.digests[method]}"
        if not isinstance(self.cache.get(key), int):
            if not self.changed:
                print(f"counting parameters (built without weights; cached in {self.path}) ...", file=sys.stderr,
                      flush=True)
            self.cache[key] = count_parameters(name)
            self.changed = True
        return self.cache[key]

    def save(self):
        if not self.changed:
            return
        import json

        from common.outdir import atomic_write_text
        try:
            atomic_write_text(self.path, json.dumps(self.cache, indent=0, sort_keys=True))
        except Exception:   # noqa: BLE001 - a cache that cannot be written only costs time
            pass


def count_parameters(name):
    """Trainable + buffer-free parameter count of `name` at its default size, built without drawing weights."""
    import numpy as np
    import paddle

    from common import init
    drawn = init._set
    init._set = lambda param, value: None       # the shapes are all this needs
    try:
        with paddle.LazyGuard():
            config = model_config(name)
            model = get_method(model_info(name).method).build_model(config)
        return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    finally:
        init._set = drawn


# -------------------------------------------------------------------------------------------------- listing
def human_count(n):
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e4 else str(n)


def table_rows(names, params=True):
    rows = []
    from common.hub_table import hub_table
    counts = ParameterCounts() if params else None
    specs, table = port_specs(), hub_table()       # read once for every row
    for n in names:
        info = model_info(n)
        count = "-"
        if params:
            try:
                count = human_count(counts.get(n))
            except Exception as e:   # noqa: BLE001 - a listing shows what it can
                count = f"? ({type(e).__name__})"
        weights = published_weights(info, table)
        # no published name, but porting rules for the authors' own files (python -m common.port --model ...)
        ported = "authors' file (port)" if info.model_name in specs or n in specs else ""
        rows.append((n, info.method, count, str(info.image_size), ", ".join(weights) or ported or "-"))
    if counts is not None:
        counts.save()
    return rows


def print_table(rows, out=sys.stdout):
    header = ("name", "method", "params", "size", "published weights (-pretrained NAME)")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1], file=out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m common.models", description="List the suite's models.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'resmlp_*'")
    p.add_argument("--method", default=None, help="only this method's models")
    p.add_argument("--no-params", action="store_true", help="skip the parameter counts (faster)")
    args = p.parse_args(argv)
    import common  # noqa: F401 - the suite's warning filters
    names = list_models(args.pattern, args.method)
    for mod, why in sorted(discovery_errors().items()):
        print(f"warning: {mod} could not be loaded: {why}", file=sys.stderr)
    if not names:
        print(f"error: no model matches '{args.pattern}'" + (f" of method {args.method}" if args.method else ""),
              file=sys.stderr)
        return 2
    print_table(table_rows(names, params=not args.no_params))
    return 0


if __name__ == "__main__":
    # run as a script this file is `__main__`; the models register with `common.models`, so list from that module
    from common import models as _registry
    sys.exit(_registry.main())
