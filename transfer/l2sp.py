"""L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning"): a penalty added to the loss that keeps
pretrained weights near their starting point w0 and new layers small.

Two modes:

``paper`` (default)
    pretrained body blocks: ALPHA / 2 * ||w - w0||^2 (ALPHA_HIGH instead of ALPHA for the blocks of the upper,
    high-LR group when TRANSFER.NUM_LOWLRS splits the body and ALPHA_HIGH >= 0);
    new layers (the classifier and the re-initialised blocks): BETA / 2 * ||w||^2.

``reference``
    what the non-binary transfer code computes (its rates are hard-coded there; ALPHA/BETA are not used):
    the classifier, the top N body blocks (N = new_layers; one more than are re-initialised) and the pretrained
    blocks of the high-LR group are pulled to zero, the `num_lowlrs` bottom blocks to w0, and the total is
    0.004 * (10 * first + 5 * each further low-block term) + 0.0005 * (sum of the zero-pull terms), every term
    being ||.||^2 / 2.

BatchNorm scales/shifts and statistics are never penalised. w0 is a snapshot of the weights taken when the
penalty is built, i.e. after the pretrained weights are loaded and the new layers re-initialised.
"""
import paddle

from transfer.model import lr_groups, new_layer_blocks, norm_parameter_names, parameter_blocks

MODES = ("paper", "reference")
REFERENCE_LOW, REFERENCE_LOW_FIRST, REFERENCE_ZERO = 0.004 * 5, 0.004 * 10, 0.0005


def l2sp_plan(model, new_layers, num_lowlrs=-1, alpha=0.0, alpha_high=-1.0, beta=0.0, mode="paper"):
    """[(parameter name, coefficient, anchored)] in parameter order: the term is coefficient / 2 * ||w - w0||^2
    when anchored, coefficient / 2 * ||w||^2 otherwise. Terms with coefficient 0 are left out."""
    if mode not in MODES:
        raise ValueError(f"unknown L2-SP mode '{mode}'; use one of {', '.join(MODES)}")
    blocks = parameter_blocks(model)
    norms = norm_parameter_names(model)
    new = {b.name for b in new_layer_blocks(model, new_layers)}
    groups = lr_groups(model, num_lowlrs) if num_lowlrs >= 0 else None
    nbody = len(model.ordered_blocks())
    plan = []
    first_low = True
    for name, block in blocks.items():
        if name in norms:
            continue
        if mode == "paper":
            if block.name in new:
                coef, anchored = beta, False
            elif groups is not None and groups[name] == "high" and alpha_high >= 0:
                coef, anchored = alpha_high, True
            else:
                coef, anchored = alpha, True
        else:
            low = not block.is_classifier and block.index < max(num_lowlrs, 0)
            top = not block.is_classifier and block.index >= nbody - new_layers
            if block.is_classifier or top or not low:
                coef, anchored = REFERENCE_ZERO, False
            else:
                coef, anchored = (REFERENCE_LOW_FIRST if first_low else REFERENCE_LOW), True
                first_low = False
        if coef != 0:
            plan.append((name, float(coef), anchored))
    return plan


class L2SP:
    """Callable penalty: `L2SP(model, ...)` snapshots w0 now; `penalty(model)` returns a float32 scalar tensor."""

    def __init__(self, model, new_layers, num_lowlrs=-1, alpha=0.0, alpha_high=-1.0, beta=0.0, mode="paper"):
        self.plan = l2sp_plan(model, new_layers, num_lowlrs, alpha, alpha_high, beta, mode)
        params = dict(model.named_parameters())
        self.anchors = {name: params[name].detach().astype("float32").clone()
                        for name, _, anchored in self.plan if anchored}
        for a in self.anchors.values():
            a.stop_gradient = True

    def summary(self):
        anchored = sum(1 for _, _, a in self.plan if a)
        coefs = sorted({c for _, c, _ in self.plan})
        return (f"L2-SP on {len(self.plan)} tensors ({anchored} pulled to their starting values, "
                f"{len(self.plan) - anchored} to zero); coefficients {', '.join(f'{c:g}' for c in coefs)}")

    def __call__(self, model):
        params = dict(model.named_parameters())
        terms = []
        for name, coef, anchored in self.plan:
            w = params[name].astype("float32")
            d = w - self.anchors[name] if anchored else w
            terms.append((d * d).sum() * (coef / 2.0))
        if not terms:
            return paddle.zeros([], dtype="float32")
        return paddle.add_n(terms)
