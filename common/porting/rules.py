"""Declarative key/value mapping from a source state dict (PyTorch names and layouts) to a Paddle model's.

A port is an ordered list of rules. For every source tensor:

1. ``Drop`` rules are tested against the *source* key; a dropped tensor is only reported.
2. Rename rules (``PrefixRename``, ``RegexRename``) rewrite the key, each in list order, each at most once.
3. Value rules (``Transpose``, ``Reshape``, ``Cast``) are tested against the *target* key (after renames).

Key patterns are Python regular expressions that must match the whole key or a dotted prefix of it:
``head`` matches ``head.weight`` and ``head.bias`` but not ``head_dist.weight``; ``.*\\.num_batches_tracked``
matches that buffer in any layer.

:func:`port_state_dict` then checks the result against the model's parameter shapes: every target filled exactly
once, every shape equal, no source tensor left over. It raises :class:`PortError` listing every problem, naming the
source and target keys and shapes.
"""
import re
from dataclasses import dataclass, field

import numpy as np

from common.errors import SuiteError

__all__ = [
    "Drop", "PrefixRename", "RegexRename", "Transpose", "Reshape", "Cast", "batchnorm_rules", "key_matcher",
    "apply_rules", "port_state_dict", "PortError", "PortReport",
]


def key_matcher(pattern):
    """Compile a key pattern: a regex matching the whole key or a dotted prefix of it."""
    rx = re.compile(rf"(?:{pattern})(?:\..*)?", re.DOTALL)
    return lambda key: rx.fullmatch(key) is not None


class _KeyRule:
    def __init__(self, pattern):
        self.pattern = pattern
        self._match = key_matcher(pattern)

    def matches(self, key):
        return self._match(key)


class Drop(_KeyRule):
    """Discard source tensors whose key matches (e.g. ``.*\\.num_batches_tracked``, a distillation head)."""
    stage = "drop"

    def __init__(self, pattern, reason=""):
        super().__init__(pattern)
        self.reason = reason

    def __repr__(self):
        return f"Drop({self.pattern!r})" + (f" # {self.reason}" if self.reason else "")


class PrefixRename:
    """``old`` at the start of a key becomes ``new``."""
    stage = "rename"

    def __init__(self, old, new):
        self.old, self.new = old, new

    def rename(self, key):
        return self.new + key[len(self.old):] if key.startswith(self.old) else key

    def __repr__(self):
        return f"PrefixRename({self.old!r} -> {self.new!r})"


class RegexRename:
    """``re.sub(pattern, repl, key)``, e.g.
    ``RegexRename(r'^blocks\\.(\\d+)\\.attn\\.', r'mixer_layers.\\1.linear_tokens.')``."""
    stage = "rename"

    def __init__(self, pattern, repl):
        self.pattern, self.repl = pattern, repl
        self._rx = re.compile(pattern)

    def rename(self, key):
        return self._rx.sub(self.repl, key)

    def __repr__(self):
        return f"RegexRename({self.pattern!r} -> {self.repl!r})"


class Transpose(_KeyRule):
    """Permute the axes of matching tensors with `ndim` dimensions (default: reverse a 2-D matrix, i.e. turn a
    torch Linear weight [out, in] into Paddle's [in, out]). ``ndim=None`` applies to any rank."""
    stage = "value"

    def __init__(self, pattern=".*", ndim=2, axes=None):
        super().__init__(pattern)
        self.ndim, self.axes = ndim, axes

    def applies(self, key, value):
        return self.matches(key) and (self.ndim is None or value.ndim == self.ndim)

    def apply(self, value, target_shape):
        return np.ascontiguousarray(np.transpose(value, self.axes))

    def __repr__(self):
        return f"Transpose({self.pattern!r}, ndim={self.ndim}" + (f", axes={self.axes})" if self.axes else ")")


class Reshape(_KeyRule):
    """Reshape matching tensors to `shape`, or to the target's shape when `shape` is None (sizes must agree;
    e.g. a 1-D affine scale [C] -> [1, 1, C])."""
    stage = "value"

    def __init__(self, pattern, shape=None):
        super().__init__(pattern)
        self.shape = None if shape is None else tuple(shape)

    def applies(self, key, value):
        return self.matches(key)

    def apply(self, value, target_shape):
        shape = self.shape if self.shape is not None else target_shape
        if shape is None or int(np.prod(shape)) != value.size:
            return value  # left for the shape check to report with both keys named
        return value.reshape(shape)

    def __repr__(self):
        return f"Reshape({self.pattern!r}, {self.shape if self.shape is not None else 'target shape'})"


class Cast(_KeyRule):
    """Convert matching tensors to `dtype`."""
    stage = "value"

    def __init__(self, pattern, dtype):
        super().__init__(pattern)
        self.dtype = np.dtype(dtype)

    def applies(self, key, value):
        return self.matches(key)

    def apply(self, value, target_shape):
        return value.astype(self.dtype)

    def __repr__(self):
        return f"Cast({self.pattern!r}, {self.dtype})"


def batchnorm_rules():
    """torch BatchNorm buffers -> Paddle: running_mean -> _mean, running_var -> _variance, no step counter."""
    return [
        Drop(r".*\.num_batches_tracked", reason="torch BatchNorm step counter; Paddle has none"),
        RegexRename(r"\.running_mean$", "._mean"),
        RegexRename(r"\.running_var$", "._variance"),
    ]


class PortError(SuiteError, ValueError):
    """The source does not fill the target exactly; `problems` lists each misfit, `report` what did fit."""

    def __init__(self, problems, report):
        self.problems = list(problems)
        self.report = report
        super().__init__("weights do not port cleanly:\n  " + "\n  ".join(self.problems))


@dataclass
class PortReport:
    filled: dict = field(default_factory=dict)          # target key -> source key
    ops: dict = field(default_factory=dict)             # target key -> value rules applied
    missing_allowed: list = field(default_factory=list)  # target keys left out on purpose (new head)
    skipped: list = field(default_factory=list)         # (source, target, source shape, target shape) not used
    dropped: list = field(default_factory=list)         # (source key, rule)
    leftovers: list = field(default_factory=list)       # source keys with no target
    missing: list = field(default_factory=list)         # target keys not filled (and not allowed missing)

    def summary(self):
        lines = [f"ported {len(self.filled)} tensors"]
        n_t = sum(1 for ops in self.ops.values() if any(o.startswith("Transpose") for o in ops))
        n_r = sum(1 for ops in self.ops.values() if any(o.startswith("Reshape") for o in ops))
        if n_t or n_r:
            lines[0] += f" ({n_t} transposed, {n_r} reshaped)"
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} source tensors: " + _short_list(s for s, _ in self.dropped))
        if self.missing_allowed:
            lines.append("left for the model to initialise (--allow-missing): " + _short_list(self.missing_allowed))
        if self.skipped:
            lines.append("source tensors not used because the target is allowed missing and the shape differs: "
                         + _short_list(f"{s} {tuple(a)} vs {t} {tuple(b)}" for s, t, a, b in self.skipped))
        lines.append(f"leftover source tensors: {len(self.leftovers)}" +
                     (": " + _short_list(self.leftovers) if self.leftovers else ""))
        if self.missing:
            lines.append(f"target tensors not filled: {len(self.missing)}: " + _short_list(self.missing))
        return "\n".join(lines)


def _short_list(items, limit=12):
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _check_rules(rules):
    for r in rules:
        if getattr(r, "stage", None) not in ("drop", "rename", "value"):
            raise TypeError(f"not a porting rule: {r!r}")


def apply_rules(key, value, rules, target_shapes=None):
    """Run one source tensor through the rules: (target key or None if dropped, value, [applied rule names])."""
    _check_rules(rules)
    for r in rules:
        if r.stage == "drop" and r.matches(key):
            return None, value, [repr(r)]
    new = key
    for r in rules:
        if r.stage == "rename":
            new = r.rename(new)
    ops = []
    target_shape = None if target_shapes is None else target_shapes.get(new)
    for r in rules:
        if r.stage == "value" and r.applies(new, value):
            value = r.apply(value, None if target_shape is None else tuple(target_shape))
            ops.append(repr(r))
    return new, value, ops


def port_state_dict(src, target_shapes, rules, allow_missing=(), target_dtypes=None, strict=True):
    """Map `src` ({key: ndarray}) onto a model described by `target_shapes` ({key: shape}) with `rules`.

    Returns ``(ported, report)``. Strict (the default): raises :class:`PortError` if any target key is not filled,
    any is filled twice, any shape differs, or any source tensor is neither dropped by a rule nor used. Target keys
    matching an `allow_missing` pattern (an intentionally new classifier) may stay unfilled, and source tensors
    aimed at them with another shape are skipped; both are recorded in the report. With `target_dtypes`, floating
    values are cast to the model's float type (integers to its integer type).
    """
    rules = list(rules)
    _check_rules(rules)
    target_shapes = {k: tuple(int(d) for d in v) for k, v in target_shapes.items()}
    allow = [key_matcher(p) for p in allow_missing]

    def allowed_missing(k):
        return any(m(k) for m in allow)

    report = PortReport()
    out = {}
    sources_of = {}
    problems = []
    leftovers = []
    for skey, value in src.items():
        value = np.asarray(value)
        tkey, value, ops = apply_rules(skey, value, rules, target_shapes)
        if tkey is None:
            report.dropped.append((skey, ops[0]))
            continue
        if tkey not in target_shapes:
            leftovers.append(skey if tkey == skey else f"{skey} (-> {tkey})")
            continue
        sources_of.setdefault(tkey, []).append(skey)
        want = target_shapes[tkey]
        if tuple(value.shape) != want:
            if allowed_missing(tkey):
                report.skipped.append((skey, tkey, tuple(np.shape(src[skey])), want))
                continue
            applied = f" after {', '.join(ops)}" if ops else ""
            problems.append(f"shape mismatch: source '{skey}' {tuple(np.shape(src[skey]))} -> target '{tkey}': "
                            f"{tuple(value.shape)}{applied}, but the model expects {want}")
            continue
        if target_dtypes is not None and tkey in target_dtypes:
            want_dt = np.dtype(target_dtypes[tkey])
            if value.dtype != want_dt:
                same_kind = (np.issubdtype(value.dtype, np.floating) and np.issubdtype(want_dt, np.floating)) or \
                    (np.issubdtype(value.dtype, np.integer) and np.issubdtype(want_dt, np.integer))
                if not same_kind:
                    problems.append(f"dtype mismatch: source '{skey}' is {value.dtype}, target '{tkey}' is {want_dt}")
                    continue
                value = value.astype(want_dt)
        out[tkey] = value
        report.filled[tkey] = skey
        report.ops[tkey] = ops
    for tkey, skeys in sources_of.items():
        if len(skeys) > 1:
            problems.append(f"target '{tkey}' is produced by several source keys: "
                            + ", ".join(f"'{s}'" for s in skeys))
            out.pop(tkey, None)
            report.filled.pop(tkey, None)
    missing = [k for k in target_shapes if k not in out and k not in sources_of]
    report.missing_allowed = [k for k in missing if allowed_missing(k)] + \
        [t for _, t, _, _ in report.skipped if t not in out]
    report.missing_allowed = list(dict.fromkeys(report.missing_allowed))
    really_missing = [k for k in missing if not allowed_missing(k)]
    if strict:
        if really_missing:
            problems.append(f"target keys not filled by any source ({len(really_missing)}): "
                            + _short_list((f"'{k}' {target_shapes[k]}" for k in really_missing), limit=40))
        if leftovers:
            problems.append(f"source keys with no target ({len(leftovers)}): "
                            + _short_list((f"'{k}'" for k in leftovers), limit=40))
    report.missing = really_missing
    report.leftovers = leftovers
    unused_patterns = [p for p, m in zip(allow_missing, allow) if not any(m(k) for k in target_shapes)]
    if unused_patterns:
        problems.append(f"--allow-missing pattern(s) match no key of the model: {unused_patterns}")
    if problems:
        raise PortError(problems, report)
    return out, report
