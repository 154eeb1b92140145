"""The architectures the benchmark measures: each built in Paddle through the model registry (common/models.py),
and, where available, its PyTorch reference."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _registry(name, **kwargs):
    """A Paddle builder for registry model `name` (create_model keywords: image_size, opts, ...)."""
    def paddle_model(num_classes):
        from common.models import create_model
        return create_model(name, num_classes=num_classes, **kwargs)
    return paddle_model


def _resmlp(name):
    paddle_model = _registry(name)

    def torch_model(num_classes):
        import timm

        from common.models import model_config
        # the same stochastic depth on both sides: the suite builds ResMLP with its recipe's MODEL.DROPPATH (0.1),
        # timm with none unless told (before 2026-12-02 the benchmark compared 0.1 against 0: in Paddle's
        # disfavour, ~37 MB more saved activations per ResMLP-24 block at batch 16)
        drop_path = max(0.0, float(model_config(name).MODEL.DROPPATH))
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path)
    return dict(paddle=paddle_model, torch=torch_model, size=224, reference="timm")


def _resnet50():
    paddle_model = _registry("resnet50")

    def torch_model(num_classes):
        import torchvision
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    return dict(paddle=paddle_model, torch=torch_model, size=224, reference="torchvision")


def _inception_v4():
    paddle_model = _registry("inception_v4")

    def torch_model(num_classes):
        import timm
        return timm.create_model("inception_v4", pretrained=False, num_classes=num_classes)
    return dict(paddle=paddle_model, torch=torch_model, size=299, reference="timm")


# selected tokens per level at 224 px, at the paper's ratios (Swin-L 384: 2048/512/128/32 of 2304/576/144/144 tokens;
# the ResNet-50 config: 2048/512/128/32 of 12544/3136/784/196)
PIM_SELECTS_224 = {"swin": [704, 176, 44, 11], "resnet": [512, 128, 32, 8]}


def _dynamic_mlp(name):
    """SK-Res2Net-101 + Dynamic MLP-C with its metadata input; the reference is the official code
    (DYNAMIC_MLP_REF=/path/to/DynamicMLP checkout, not on PyPI)."""
    paddle_model = _registry(name)

    def torch_model(num_classes):
        from dynamic_mlp.port_weights import build_reference
        return build_reference(name, num_classes=num_classes)

    def extras(batch):
        import numpy as np
        return [np.random.RandomState(0).uniform(-1, 1, (batch, 6)).astype("float32")]
    return dict(paddle=paddle_model, torch=torch_model, size=224, reference="official (DYNAMIC_MLP_REF)",
                extras=extras, extra_shapes=[[6]])


def _pim(backbone, proj, upsample):
    """PIM (FPN 512, selector, GCN combiner) at 224 px; the reference is the official code (PIM_REF=checkout)."""
    selects = PIM_SELECTS_224["swin" if backbone.startswith("swin") else "resnet"]

    paddle_model = _registry(f"pim_{backbone}", image_size=224, opts={
        "MODEL.PIM.FPN_SIZE": 512, "MODEL.PIM.PROJ_TYPE": proj, "MODEL.PIM.UPSAMPLE_TYPE": upsample,
        "MODEL.PIM.NUM_SELECTS": selects})

    def torch_model(num_classes):
        from pim.reference import import_reference
        import_reference()
        from models.pim_module import pim_module
        by_level = dict(zip(["layer1", "layer2", "layer3", "layer4"], selects))
        if backbone.startswith("swin"):
            from timm.models.swin_transformer import SwinTransformer   # the reference's vendored timm
            net = SwinTransformer(img_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2),
                                  num_heads=(3, 6, 12, 24), window_size=7, num_classes=1000)
            return pim_module.PluginMoodel(backbone=net, return_nodes=None, img_size=224, use_fpn=True,
                                           fpn_size=512, proj_type=proj, upsample_type=upsample,
                                           use_selection=True, num_classes=num_classes, num_selects=by_level,
                                           use_combiner=True, comb_proj_size=None)
        from models.builder import build_resnet50
        return build_resnet50(pretrained="", num_selects=by_level, img_size=224, fpn_size=512,
                              num_classes=num_classes)
    # the predictor exports what `-eval -predictor` deploys: the combiner's logits (MODEL.PIM.MAIN_HEAD)
    return dict(paddle=paddle_model, torch=torch_model, size=224, reference="official (PIM_REF)", head="comb_outs")


ARCHS = {
    "resmlp_12": _resmlp("resmlp_12_224"),
    "resmlp_24": _resmlp("resmlp_24_224"),
    "resmlp_36": _resmlp("resmlp_36_224"),
    "resmlp_big_24": _resmlp("resmlp_big_24_224"),
    "resnet50": _resnet50(),
    "sk2res2net101_dmlp_c": _dynamic_mlp("sk2res2net101_dynamic_mlp_c"),
    "pim_swin_t": _pim("swin_tiny_patch4_window7_224", "Linear", "Conv"),
    "pim_resnet50": _pim("resnet50", "Conv", "Bilinear"),
    "inception_v4": _inception_v4(),
}
QUICK = ["resmlp_12", "resnet50"]
ENGINE_ARCHS = ["resmlp_12", "resnet50"]   # engine vs bare loop
