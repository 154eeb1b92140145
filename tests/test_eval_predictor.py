"""-eval through the exported model in Paddle Inference (common.export.PredictorEval): every head the dygraph
evaluation reports, with its counts; used only when it agrees with the dygraph model on the first batch; chosen by
itself on CPU only when dygraph would be slow (EVAL.PREDICTOR_MIN_SECONDS); a failing export costs speed, not the
run, unless -predictor asked for it."""
import numpy as np
import paddle
import pytest

from common.config import ConfigError, check_config
from common.engine.trainer import NonFiniteLossError, evaluate
from common.export import ExportError, PredictorEval
from common.runner import eval_predictor
from pim.method import PIMMethod
from tests.test_method_state import SETTINGS_A, TINY_PIM, config


@pytest.fixture(scope="module")
def pim():
    """A tiny PIM with five heads (four levels, the combiner, highest-2, 'sum' as main head) and three batches
    whose labels are partly its own predictions, so the counts are neither 0 nor all."""
    method = PIMMethod()
    cfg = config(method, *TINY_PIM, *SETTINGS_A)
    paddle.seed(3)
    model = method.build_model(cfg)
    model.eval()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        x = paddle.to_tensor(rng.normal(size=(4, 3, 64, 64)).astype("float32"))
        with paddle.no_grad():
            pred = method.eval_heads(model, model(x))["sum"].argmax(1).numpy()
        labels = np.where(rng.random(4) < 0.5, pred, rng.integers(0, 4, 4))
        batches.append((x, paddle.to_tensor(labels.astype("int64"))))
    return method, cfg, model, batches


def scored(pim, heads_fn=None):
    method, cfg, model, batches = pim
    return evaluate(model, method, batches, cfg, "cpu", heads_fn)


def assert_same_metrics(got, want):
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if key.endswith("loss"):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert got[key] == value, key


def test_the_exported_model_scores_every_head_as_dygraph_does(pim):
    method, cfg, model, batches = pim
    lines = []
    fast = PredictorEval(method, cfg, model, "cpu", lines.append, batches=len(batches), min_seconds=0)
    got = scored(pim, fast)
    assert any("through the exported model in Paddle Inference" in line for line in lines), lines
    assert fast._run is not fast._dygraph
    want = scored(pim)
    assert {"top1", "combiner/top1", "highest-2/top1", "layer1/top1"} <= set(want)
    assert 0 < want["correct"] < want["count"] == 12
    assert_same_metrics(got, want)


def test_an_exported_model_that_disagrees_is_not_used(pim, monkeypatch):
    method, cfg, model, batches = pim
    real = PredictorEval._predictor

    def off_by_one(self, names):
        run = real(self, names)
        return lambda images, extras: {k: v + 1.0 for k, v in run(images, extras).items()}
    monkeypatch.setattr(PredictorEval, "_predictor", off_by_one)
    for min_seconds in (0, None):   # automatic, and -predictor: a wrong number is never the price of speed
        lines = []
        got = scored(pim, PredictorEval(method, cfg, model, "cpu", lines.append, batches=3, min_seconds=min_seconds))
        assert any(line.startswith("warning:") and "differ from the dygraph model" in line for line in lines), lines
        assert_same_metrics(got, scored(pim))


def test_a_failing_export_falls_back_unless_predictor_was_asked_for(pim, monkeypatch):
    method, cfg, model, batches = pim

    def broken(self, names):
        raise RuntimeError("(Unimplemented) some operator has no kernel\n  [long Paddle trace]")
    monkeypatch.setattr(PredictorEval, "_predictor", broken)
    lines = []
    got = scored(pim, PredictorEval(method, cfg, model, "cpu", lines.append, batches=3, min_seconds=0))
    assert lines == ["warning: the exported model could not be run (RuntimeError); evaluating in dygraph"]
    assert_same_metrics(got, scored(pim))
    with pytest.raises(ExportError, match=r"-predictor: .*RuntimeError: \(Unimplemented\) some operator has no "
                                          r"kernel$"):
        scored(pim, PredictorEval(method, cfg, model, "cpu", lines.append, batches=3, min_seconds=None))


def test_a_quick_evaluation_stays_in_dygraph_without_exporting(pim, monkeypatch):
    method, cfg, model, batches = pim
    calls = []
    monkeypatch.setattr(PredictorEval, "_predictor", lambda self, names: calls.append(names))
    lines = []
    got = scored(pim, PredictorEval(method, cfg, model, "cpu", lines.append, batches=3, min_seconds=3600))
    assert calls == [] and lines == []
    assert_same_metrics(got, scored(pim))


def test_non_finite_logits_are_reported_not_exported(pim, monkeypatch):
    method, cfg, model, batches = pim
    calls = []
    monkeypatch.setattr(PredictorEval, "_predictor", lambda self, names: calls.append(names))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for weight in model.parameters():   # each head's own classifier too: relu maps NaN to 0 in Paddle
            weight.set_value(paddle.full_like(weight, float("nan")))
        with pytest.raises(NonFiniteLossError):
            scored(pim, PredictorEval(method, cfg, model, "cpu", lambda line: None, batches=3, min_seconds=0))
        assert calls == []
    finally:
        model.set_state_dict(state)


def test_which_evaluations_choose_the_predictor_by_themselves():
    method = PIMMethod()
    assert eval_predictor(config(method, "SEED", "0"), "cpu") == "auto"
    assert eval_predictor(config(method, "EVAL.PREDICTOR", "True"), "gpu:0") == "always"
    assert eval_predictor(config(method, "SEED", "0"), "gpu:0") is None                   # the GPU's dygraph is not the slow path
    assert eval_predictor(config(method, "AMP.ENABLE", "True"), "cpu") is None   # the predictor runs float32
    assert eval_predictor(config(method, "EVAL.PREDICTOR_MIN_SECONDS", "0"), "cpu") is None
    with pytest.raises(ConfigError, match="EVAL.PREDICTOR_MIN_SECONDS"):
        check_config(config(method, "EVAL.PREDICTOR_MIN_SECONDS", "-1"))
