"""transfer/port_weights.py: Inception v4 (timm) and ResNet-50 (torchvision, timm) ported to Paddle give the
reference's logits (random weights, BatchNorm statistics randomised, eval mode, max|d| / max|ref| < 1e-5), through
the rules and through `python -m common.port`."""
import subprocess
import sys

import numpy as np
import paddle
import pytest

from common.porting import PortError, RegexRename, port_state_dict, seeded_input, seeded_state, write_safetensors
from common.safe_pickle import load_paddle_file
from tests.helpers import REPO, env
from transfer.port_weights import DropBackgroundClass, INCEPTION_RULES, PORT_SPECS, RESNET_RULES

torch = pytest.importorskip("torch")
TOL = 1e-5


def rel(out, ref):
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def torch_state(ref, seed):
    sd = ref.state_dict()
    return seeded_state({k: tuple(v.shape) for k, v in sd.items()}, seed=seed,
                        dtypes={k: str(v.dtype).replace("torch.", "") for k, v in sd.items()})


def logits_pair(ref, model, src, rules, x):
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in src.items()})
    ported, report = port_state_dict(src, {k: tuple(v.shape) for k, v in model.state_dict().items()}, rules)
    missing, unexpected = model.set_state_dict(ported)
    assert not missing and not unexpected
    ref.eval()
    model.eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        got = model(paddle.to_tensor(x)).numpy()
    return got, want


def run_port(*args):
    return subprocess.run([sys.executable, "-m", "common.port", *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)


def test_inception_v4_matches_timm(tmp_path):
    """A 1001-class checkpoint (the reference's starting point: timm <= 0.4 / Cadene, background logit first)
    through `python -m common.port` into the 1000-class model, against timm's 1000-class model given rows 1:."""
    timm = pytest.importorskip("timm")
    src = torch_state(timm.create_model("inception_v4", pretrained=False, num_classes=1001), seed=11)
    path, dst = tmp_path / "inceptionv4-cadene.safetensors", tmp_path / "inception_v4.pdparams"
    write_safetensors(str(path), src)
    proc = run_port("--model", "inception_v4", "--src", path, "--dst", dst)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ported 747 tensors" in proc.stdout and "leftover source tensors: 0" in proc.stdout
    out = load_paddle_file(str(dst))
    np.testing.assert_array_equal(out["last_linear.weight"], src["last_linear.weight"][1:].T)
    np.testing.assert_array_equal(out["last_linear.bias"], src["last_linear.bias"][1:])

    ref = timm.create_model("inception_v4", pretrained=False, num_classes=1000).eval()
    ref.load_state_dict({k: torch.from_numpy(v[1:] if k.startswith("last_linear") else v) for k, v in src.items()})
    model = PORT_SPECS["inception_v4"].build_model()
    missing, unexpected = model.set_state_dict(out)
    assert not missing and not unexpected
    model.eval()
    x = seeded_input((2, 3, 160, 160), seed=12)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        got = model(paddle.to_tensor(x)).numpy()
    r = rel(got, want)
    print(f"\ninception_v4 vs timm (160 px, eval): max|d|/max|ref| = {r:.2e}")
    assert want.std() > 0.05 and r < TOL
    # without the background-row rule the 1001-class file does not fit, and says where
    plain = [r for r in INCEPTION_RULES if not isinstance(r, DropBackgroundClass)]
    with pytest.raises(PortError, match="last_linear.weight"):
        port_state_dict(src, {k: tuple(v.shape) for k, v in model.state_dict().items()}, plain)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_resnet50_matches(source):
    if source == "timm":
        timm = pytest.importorskip("timm")
        ref = timm.create_model("resnet50", pretrained=False, num_classes=10)
    else:
        torchvision = pytest.importorskip("torchvision")
        ref = torchvision.models.resnet50(weights=None, num_classes=10)
    src = torch_state(ref, seed=13)
    model = PORT_SPECS["resnet50"].build_model(num_classes=10)
    x = seeded_input((2, 3, 128, 128), seed=14)
    got, want = logits_pair(ref, model, src, RESNET_RULES, x)
    r = rel(got, want)
    print(f"\nresnet50 vs {source} (128 px, eval): max|d|/max|ref| = {r:.2e}")
    assert want.std() > 0.05 and r < TOL
    # BatchNorm statistics swapped: every shape still fits, only the logits tell
    swapped = [RegexRename(r"\.running_mean$", "._variance"), RegexRename(r"\.running_var$", "._mean")] + \
        [r for r in RESNET_RULES if not isinstance(r, RegexRename)]
    model = PORT_SPECS["resnet50"].build_model(num_classes=10)
    got, want = logits_pair(ref, model, src, swapped, x)
    assert rel(got, want) > 1e-2


def test_resnet50_new_head_through_the_cli(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    src = torch_state(torchvision.models.resnet50(weights=None), seed=31)
    path, dst = tmp_path / "resnet50_tv.safetensors", tmp_path / "resnet50_200.pdparams"
    write_safetensors(str(path), src)
    proc = run_port("--model", "resnet50", "--src", path, "--dst", dst, "--num-classes", 200, "--allow-missing", "fc",
                    "--verify")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("verify")][0]
    print("\n" + line)
    assert "-> OK" in line
    out = load_paddle_file(str(dst))
    assert "fc.weight" not in out and "layer4.2.bn3._variance" in out
    np.testing.assert_array_equal(out["layer4.2.bn3._variance"], src["layer4.2.bn3.running_var"])
    listed = run_port("--list").stdout
    assert "inception_v4" in listed and "resnet50" in listed
