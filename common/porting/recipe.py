"""Seeded weights and inputs for parity tests and fixtures.

Weights are drawn from ``numpy.random.RandomState`` (whose stream numpy keeps fixed across releases) in sorted key
order, so the same seed gives the same tensors on any machine, without the reference code. Values are scaled to
keep activations of deep networks in a sensible range, and scales/shifts/layer-scales are drawn away from their
usual constant initial values so that a mapping error on any of them shows in the output.

Keys follow PyTorch conventions (weights [out, in, ...]); the recipe looks at the last name component and the rank:

* ``alpha`` / ``gamma`` of an affine or norm layer, and 1-D ``weight``: 1 + 0.1 N(0, 1)
* ``running_var``: uniform in [0.5, 1.5]; ``running_mean``: 0.1 N(0, 1)
* other tensors with 2 or more dimensions: N(0, 1) / sqrt(fan_in), fan_in = prod(shape[1:])
* everything else (biases, ``beta``, layer scales ``ls1``/``gamma_1``...): 0.1 N(0, 1)
* integer tensors (e.g. ``num_batches_tracked``) are left to the caller (zeros here).
"""
import numpy as np

__all__ = ["seeded_state", "seeded_input", "fingerprint"]

_SCALE_NAMES = ("alpha", "gamma")


def _draw(rng, key, shape):
    name = key.rsplit(".", 1)[-1]
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    if name in _SCALE_NAMES or (name == "weight" and ndim == 1):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name == "running_var":
        return rng.uniform(0.5, 1.5, size=shape)
    if name == "beta" or ndim < 2:
        return 0.1 * rng.standard_normal(shape)
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape) / np.sqrt(fan_in)


def seeded_state(shapes, seed, dtypes=None):
    """{key: shape} -> {key: float32 ndarray} drawn in sorted key order from RandomState(seed).

    `dtypes` ({key: dtype}) marks integer tensors, which are returned as zeros without consuming random numbers.
    """
    rng = np.random.RandomState(seed)
    out = {}
    for key in sorted(shapes):
        dt = np.dtype(dtypes[key]) if dtypes and key in dtypes else np.dtype(np.float32)
        if not np.issubdtype(dt, np.floating):
            out[key] = np.zeros(tuple(shapes[key]), dtype=dt)
            continue
        out[key] = _draw(rng, key, shapes[key]).astype(dt)
    return out


def seeded_input(shape, seed):
    """N(0, 1) float32 input of `shape` from RandomState(seed)."""
    return np.random.RandomState(seed).standard_normal(tuple(shape)).astype(np.float32)


def fingerprint(arrays):
    """A few float64 numbers that change when any of the arrays change (to tell a recipe drift from a port bug)."""
    if isinstance(arrays, dict):
        arrays = [arrays[k] for k in sorted(arrays)]
    total = 0.0
    weighted = 0.0
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype=np.float64).ravel()
        total += a.sum()
        weighted += (a[: 1 + a.size // 7] * (i + 1)).sum()
    return np.array([total, weighted], dtype=np.float64)
