"""The architectures the benchmark measures: how to build each in Paddle and, where available, in PyTorch."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _resmlp(name):
    def paddle_model(num_classes):
        from resmlp.resmlp import create_resmlp
        return create_resmlp(name, num_classes=num_classes)

    def torch_model(num_classes):
        import timm
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    return dict(paddle=paddle_model, torch=torch_model, size=224, reference="timm")


def _resnet50():
    def paddle_model(num_classes):
        from common.backbones.resnet import create_resnet
        return create_resnet("resnet50", num_classes=num_classes)

    def torch_model(num_classes):
        import torchvision
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    return dict(paddle=paddle_model, torch=torch_model, size=224, reference="torchvision")


def _inception_v4():
    def paddle_model(num_classes):
        from transfer.inception_v4 import inception_v4
        return inception_v4(num_classes=num_classes)

    def torch_model(num_classes):
        import timm
        return timm.create_model("inception_v4", pretrained=False, num_classes=num_classes)
    return dict(paddle=paddle_model, torch=torch_model, size=299, reference="timm")


ARCHS = {
    "resmlp_12": _resmlp("resmlp_12_224"),
    "resmlp_24": _resmlp("resmlp_24_224"),
    "resmlp_36": _resmlp("resmlp_36_224"),
    "resmlp_big_24": _resmlp("resmlp_big_24_224"),
    "resnet50": _resnet50(),
    "inception_v4": _inception_v4(),
}
QUICK = ["resmlp_12", "resnet50"]
