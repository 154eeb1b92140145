"""Dynamic MLP: PyTorch -> Paddle weight mapping, discovered by ``python -m common.port``.

Accepted sources (told apart by their keys):

* ``official``: the authors' training checkpoints (``{'epoch', 'model', 'optimizer'}``, every key under
  ``module.`` from DataParallel; ``common.port`` picks ``model`` and strips the prefix), a bare state dict of their
  models, torchvision's ImageNet ResNet-50 (``resnet50-0676ba61.pth``, the reference's initialisation) and the
  authors' ImageNet SK-Res2Net-101 (``sk2res2net101_epoch_300.pth``). The names are ours already; only layouts
  change: every 2-D weight is an ``nn.Linear`` weight and is transposed, BatchNorm ``running_mean`` /
  ``running_var`` become ``_mean`` / ``_variance``, ``num_batches_tracked`` is dropped. Several Linear weights are
  square (``loc_net.feats.*.w1/w2``, ``loc_net.class_emb``), so only a numerical comparison catches a missing
  transpose (the parity tests do).
* ``paddle``: this suite's ``.pdparams`` (identity).

Backbone-only sources (ImageNet weights) leave the metadata branch and the classifier to the model::

    python -m common.port --model resnet50_dynamic_mlp_c --src resnet50-0676ba61.pth --dst r50_init.pdparams \\
        --allow-missing fc --allow-missing loc_net --allow-missing loc_att

``--verify`` needs torch and a checkout of the official code (github.com/ylingfeng/DynamicMLP, not on PyPI):
``DYNAMIC_MLP_REF=/path/to/DynamicMLP``. Dynamic models are then run on a seeded image batch *and* a seeded
metadata batch (with one all-zero "missing" row).
"""
import importlib.util
import logging
import os
import sys
from types import SimpleNamespace

import numpy as np

from common.porting import PortSpec, ReferenceModel, SourceFlavour, Transpose, batchnorm_rules
from dynamic_mlp.metadata import encode, input_dim
from dynamic_mlp.model import MODELS, create_model

REFERENCE_ENV = "DYNAMIC_MLP_REF"
REFERENCE_PACKAGE = "_dynamic_mlp_reference_models"

OFFICIAL_RULES = batchnorm_rules() + [Transpose(r".*\.weight", ndim=2)]
PADDLE_RULES = []

# our model name -> (backbone function, image-only module, dynamic module) in the reference's models/ package
_REFERENCE_FILES = {"resnet50": ("resnet50", "resnet", "resnet_dynamic_mlp"),
                    "sk2res2net101": ("sk2res2net101", "sk2res2net", "sk2res2net_dynamic_mlp")}
PORTABLE = [name for name, (backbone, _) in MODELS.items() if backbone in _REFERENCE_FILES]


def reference_package(path=None):
    """Import the official `models/` package from a checkout (argument, or $DYNAMIC_MLP_REF) under a private name.
    Raises ImportError with a hint when it is not available."""
    if REFERENCE_PACKAGE in sys.modules:
        return sys.modules[REFERENCE_PACKAGE]
    path = path or os.environ.get(REFERENCE_ENV, "")
    init_file = os.path.join(path, "models", "__init__.py")
    if not path or not os.path.isfile(init_file):
        raise ImportError(f"the official Dynamic MLP code is not on PyPI: clone github.com/ylingfeng/DynamicMLP and "
                          f"set {REFERENCE_ENV} to the checkout (got '{path}')")
    import torch  # noqa: F401  (fail early and clearly without torch)
    spec = importlib.util.spec_from_file_location(REFERENCE_PACKAGE, init_file,
                                                  submodule_search_locations=[os.path.dirname(init_file)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[REFERENCE_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[REFERENCE_PACKAGE]
        raise
    return module


def build_reference(name, num_classes=None, path=None, mlp_type=None, mlp_d=256, mlp_h=64, mlp_n=2,
                    metadata="geo_temporal"):
    """The official PyTorch model for one of our names (random weights, no download), in eval mode."""
    backbone, variant = MODELS[name]
    if mlp_type:
        variant = mlp_type
    fn_name, image_only_file, dynamic_file = _REFERENCE_FILES[backbone]
    pkg = reference_package(path)
    args = SimpleNamespace(mlp_type=variant or "c", mlp_cin=input_dim(metadata), mlp_d=mlp_d, mlp_h=mlp_h,
                           mlp_n=mlp_n, pretrained=False, num_classes=10000 if num_classes is None else num_classes)
    module = getattr(pkg, image_only_file if variant is None else dynamic_file)
    model = getattr(module, fn_name)(logging.getLogger("dynamic_mlp.reference"), args)
    model.eval()  # a statement of its own: the SK-Res2Net's train() override returns None
    return model


def paddle_key_to_torch(key, value):
    """One Paddle tensor -> the reference's key and layout (the inverse of OFFICIAL_RULES)."""
    if key.endswith("._mean"):
        key = key[: -len("._mean")] + ".running_mean"
    elif key.endswith("._variance"):
        key = key[: -len("._variance")] + ".running_var"
    value = np.asarray(value)
    if key.endswith(".weight") and value.ndim == 2:
        value = np.ascontiguousarray(value.T)
    return key, value


def _identity(state, model):
    return state


def _paddle_to_torch(state, model):
    import torch
    out = dict(paddle_key_to_torch(k, v) for k, v in state.items())
    for k, v in model.state_dict().items():  # Paddle has no BatchNorm step counter
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros_like(v)
    return out


FLAVOURS = [
    SourceFlavour("official", lambda keys: any(k.endswith(".running_mean") for k in keys), OFFICIAL_RULES,
                  "PyTorch: the authors' checkpoints, torchvision ResNet-50, the authors' ImageNet SK-Res2Net-101",
                  _identity),
    SourceFlavour("paddle", lambda keys: any(k.endswith("._mean") for k in keys), PADDLE_RULES,
                  "this suite's .pdparams", _paddle_to_torch),
]


def verify_metadata(batch, subset="geo_temporal", seed=0):
    """A seeded metadata batch for --verify: encoded real-looking rows, the last one all zeros (missing)."""
    import datetime
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(batch):
        if i == batch - 1 and batch > 1:
            rows.append(encode(None, None, None, subset))
            continue
        day = datetime.date(2016 + i % 5, 1, 1) + datetime.timedelta(days=int(rng.randint(0, 365)))
        rows.append(encode(float(rng.uniform(-80, 80)), float(rng.uniform(-179, 179)), day, subset))
    return [np.stack(rows).astype("float32")]


def _spec(name):
    backbone, variant = MODELS[name]
    what = "image-only" if variant is None else f"Dynamic MLP-{variant.upper()}"
    return PortSpec(
        name=name,
        build_model=lambda **overrides: create_model(name, **overrides),
        flavours=FLAVOURS,
        reference=ReferenceModel(build=lambda num_classes=None: build_reference(name, num_classes),
                                 from_target=paddle_key_to_torch, name=f"official DynamicMLP {name}"),
        input_size=(3, 224, 224),
        description=f"{backbone} {what} (iNat21: 10000 classes)",
        extra={} if variant is None else {"verify_inputs": verify_metadata},
    )


PORT_SPECS = {name: _spec(name) for name in PORTABLE}
