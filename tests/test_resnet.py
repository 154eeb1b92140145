"""ResNet backbone: torchvision layout, and logits equal to torchvision's after porting (BatchNorm statistics
randomised, eval mode)."""
import numpy as np
import paddle
import pytest

from common.backbones.resnet import create_resnet, torchvision_resnet_rules
from common.porting import port_state_dict, seeded_input, seeded_state

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
def test_ported_torchvision_resnet_matches(name):
    ref = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    sd = ref.state_dict()
    src = seeded_state({k: tuple(v.shape) for k, v in sd.items()}, seed=3,
                       dtypes={k: str(v.dtype).replace("torch.", "") for k, v in sd.items()})
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in src.items()})
    model = create_resnet(name, num_classes=10)
    ported, _ = port_state_dict(src, {k: tuple(v.shape) for k, v in model.state_dict().items()},
                                torchvision_resnet_rules())
    model.set_state_dict(ported)
    model.eval()
    x = seeded_input((2, 3, 96, 96), seed=4)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = model(paddle.to_tensor(x)).numpy()
    assert rel(got, want) < 1e-5, rel(got, want)


def test_parameter_count_and_stage_shapes():
    model = create_resnet("resnet50")
    assert sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient) == 25_557_032
    feats = model.stage_features(paddle.zeros([1, 3, 64, 64]))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
