"""Published weights that ``-pretrained`` / ``MODEL.PRETRAINED`` accept by name (see ``common/hub.py``).

Each entry: the published name (spelled like timm's ``<model>.<tag>`` under ``timm/`` and torchvision's
``<builder>.<Weights enum member>`` under ``torchvision/``), where the file lives, what is known to check it with,
and the suite models it loads into.

``source``: ``timm`` files are ``{SUITE_HUB_ENDPOINT}/timm/<repo>/resolve/main/model.safetensors`` (the model hub's
layout; the repo is the published name after ``timm/``); ``torchvision`` files are
``{SUITE_TORCHVISION_ENDPOINT}/models/<file>``.

``size`` (bytes) and ``sha256`` are checked when known. **Neither timm's pretrained configs nor the model hub's
repository cards publish a SHA-256 or an exact size that this table could record, so the timm entries carry none**
(``None``: only the server's Content-Length is checked, i.e. a truncated download is caught, a tampered one is not).
torchvision publishes the first 8 hex digits of each file's SHA-256 in its file name (``resnet50-0676ba61.pth``) and
only a rounded size in MB (``_file_size`` in the weights' meta, recorded here as ``size_mb`` for information); the
prefix is checked, as ``torch.hub`` does.

``models``: ``(method, MODEL.NAME, port spec, allow-missing patterns)``; the port spec is a model of
``python -m common.port --list``. ``method`` None: any method whose model has that name. The ported file keeps the
source's classifier (its class count); fine-tuning to another class count takes ``MODEL.PRETRAINED_NEW_HEAD True``
as with any ``.pdparams``. Allow-missing patterns name the parts the source does not have (the Dynamic MLP branch,
a classifier of another size) and stay as the model initialises them.
"""
import os

_RESMLP_SUITE = {
    "resmlp_12_224": ["resmlp_12_224", "resmlp_12_distilled_224"],
    "resmlp_24_224": ["resmlp_24_224", "resmlp_24_distilled_224"],
    "resmlp_36_224": ["resmlp_36_224", "resmlp_36_distilled_224"],
    "resmlp_big_24_224": ["resmlp_big_24_224", "resmlp_big_24_distilled_224", "resmlp_big_24_22k_224"],
}
_RESMLP_TAGS = {
    "resmlp_12_224": ["fb_in1k", "fb_distilled_in1k"],
    "resmlp_24_224": ["fb_in1k", "fb_distilled_in1k"],
    "resmlp_36_224": ["fb_in1k", "fb_distilled_in1k"],
    "resmlp_big_24_224": ["fb_in1k", "fb_distilled_in1k", "fb_in22k_ft_in1k"],
}

NO_HASH = "no SHA-256 published (only the download's Content-Length is checked)"


def _timm(repo, models, note=""):
    return {"source": "timm", "repo": repo, "file": "model.safetensors", "size": None, "sha256": None,
            "sha256_prefix": None, "hash_note": NO_HASH, "models": models, "note": note}


def _torchvision(file, sha256_prefix, size_mb, models, note=""):
    return {"source": "torchvision", "file": file, "size": None, "size_mb": size_mb, "sha256": None,
            "sha256_prefix": sha256_prefix,
            "hash_note": f"SHA-256 prefix {sha256_prefix} from the file name (full hash not published)",
            "models": models, "note": note}


def _build():
    table = {}
    for arch, tags in _RESMLP_TAGS.items():
        for tag in tags:
            repo = f"{arch}.{tag}"
            table[f"timm/{repo}"] = _timm(repo, [("resmlp", m, m, ()) for m in _RESMLP_SUITE[arch]])
    table["timm/inception_v4.tf_in1k"] = _timm(
        "inception_v4.tf_in1k", [("transfer", "inception_v4", "inception_v4", ())])
    table["timm/swin_large_patch4_window12_384.ms_in22k"] = _timm(
        "swin_large_patch4_window12_384.ms_in22k",
        [("pim", "swin_large_patch4_window12_384", "pim_backbone_swin_large_patch4_window12_384", ())],
        "the ImageNet-22k Swin-L 384 that PIM starts from (backbone only)")
    table["timm/vit_base_patch16_224.augreg_in21k"] = _timm(
        "vit_base_patch16_224.augreg_in21k",
        [("pim", "vit_base_patch16_224", "pim_backbone_vit_base_patch16_224", ())],
        "ImageNet-21k ViT-B/16 (backbone only)")
    table["timm/vit_base_patch16_224.orig_in21k"] = _timm(
        "vit_base_patch16_224.orig_in21k",
        [("pim", "vit_base_patch16_224", "pim_backbone_vit_base_patch16_224", ())],
        "the original Google ImageNet-21k ViT-B/16 (no classifier; backbone only)")
    table["timm/resnet50.a1_in1k"] = _timm(
        "resnet50.a1_in1k",
        [("transfer", "resnet50", "resnet50", ()), ("pim", "resnet50", "pim_backbone_resnet50", ())])
    resnet_models = [
        ("transfer", "resnet50", "resnet50", ()),
        ("pim", "resnet50", "pim_backbone_resnet50", ()),
        ("dynamic_mlp", "resnet50_image_only", "resnet50_image_only", ("fc",)),
        ("dynamic_mlp", "resnet50_dynamic_mlp_a", "resnet50_dynamic_mlp_a", ("fc", "loc_net", "loc_att")),
        ("dynamic_mlp", "resnet50_dynamic_mlp_b", "resnet50_dynamic_mlp_b", ("fc", "loc_net", "loc_att")),
        ("dynamic_mlp", "resnet50_dynamic_mlp_c", "resnet50_dynamic_mlp_c", ("fc", "loc_net", "loc_att")),
    ]
    table["torchvision/resnet50.IMAGENET1K_V1"] = _torchvision("resnet50-0676ba61.pth", "0676ba61", 97.781,
                                                               resnet_models)
    table["torchvision/resnet50.IMAGENET1K_V2"] = _torchvision("resnet50-11ad3fa6.pth", "11ad3fa6", 97.79,
                                                               resnet_models)
    table["torchvision/efficientnet_b7.IMAGENET1K_V1"] = _torchvision(
        "efficientnet_b7_lukemelas-c5b4e57e.pth", "c5b4e57e", 254.675,
        [("pim", "efficientnet_b7", "pim_backbone_efficientnet_b7", ())],
        "timm publishes no efficientnet_b7 weights (only tf_efficientnet_b7.*, another layout); backbone only")
    return table


HUB_TABLE = _build()


TABLE_ENV = "SUITE_HUB_TABLE"
ENTRY_FIELDS = {"source", "repo", "file", "size", "size_mb", "sha256", "sha256_prefix", "hash_note", "models", "note"}


def _extra_entries(path):
    """Names added or amended by the JSON file ``$SUITE_HUB_TABLE`` ({name: {field: value}}), e.g. a lab's own
    weights on its mirror (with their SHA-256). A field of a known name replaces the table's; a new name needs
    ``source``, ``file`` (and ``repo`` for timm) and ``models`` ([[method, MODEL.NAME, port spec, [patterns]]])."""
    import json

    from common.config import ConfigError
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{TABLE_ENV}={path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{TABLE_ENV}={path}: expected {{name: {{field: value}}}}")
    out = {}
    for name, fields in data.items():
        unknown = sorted(set(fields) - ENTRY_FIELDS)
        if unknown or not name.startswith(("timm/", "torchvision/")):
            raise ConfigError(f"{TABLE_ENV}={path}: entry '{name}': " + (
                f"unknown field(s) {', '.join(unknown)}" if unknown else "names start with timm/ or torchvision/"))
        entry = dict(HUB_TABLE.get(name) or {"source": name.split("/", 1)[0], "size": None, "sha256": None,
                                               "sha256_prefix": None, "hash_note": "", "note": ""}, **fields)
        entry["models"] = [tuple(r[:3]) + (tuple(r[3]) if len(r) > 3 else (),) for r in entry.get("models", [])] \
            if "models" in fields else entry.get("models", [])
        missing = [k for k in ("file", "models") + (("repo",) if entry["source"] == "timm" else ()) if not entry.get(k)]
        if missing:
            raise ConfigError(f"{TABLE_ENV}={path}: entry '{name}' lacks {', '.join(missing)}")
        out[name] = entry
    return out


def hub_table():
    """The published names: HUB_TABLE, plus or amended by ``$SUITE_HUB_TABLE`` when set."""
    path = os.environ.get(TABLE_ENV)
    return {**HUB_TABLE, **_extra_entries(path)} if path else HUB_TABLE
