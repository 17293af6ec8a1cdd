"""Depth sampling: how many layer positions D one forward pass runs (method spec, section 1).

Every draw is a pure function of (seed, optimizer step, micro-step): it uses a generator of its
own, so it is identical on every rank and after a resume, and it never touches the global RNGs
that data order, MLM masking or dropout use (the official release drew from Python's global
`random`, so ranks agreed only by luck).
"""
from __future__ import annotations

import numpy as np

DIST_FUNCTIONS = ("lvps", "uniform", "sigmoid", "constant_high", "constant_low")

# Constants of the official LVPS / sigmoid curves: y falls from b = L/U + 0.4 at x0 to e at 1.
_E = 0.6
_X0 = 1e-6


def depth_from_uniform(dist: str, x, unique: int, full: int):
    """Map uniform draws `x` (scalar or array, in [x0, 1)) to depths D in [unique, full].

    Vectorised so tests can check the distribution on many draws; `sample_depth` is the scalar use.
    """
    x = np.asarray(x, dtype=np.float64)
    r = full / unique
    b = r + 0.4
    if dist == "lvps":
        n = (b * _X0 - _E) / (_E - b)
        m = _E * (n + 1)
        y = m / (x + n)
    elif dist == "sigmoid":
        y = (b - _E) / (1 + np.exp(20 * (x - 0.5))) + _E
    elif dist == "uniform":
        # Equal mass on each integer in unique..full.
        return np.minimum(unique + np.floor(x * (full - unique + 1)).astype(np.int64), full)
    elif dist == "constant_high":
        return np.full(x.shape, full, dtype=np.int64)
    elif dist == "constant_low":
        return np.full(x.shape, unique, dtype=np.int64)
    else:
        raise ValueError(f"unknown dist_function {dist!r}; choose from {', '.join(DIST_FUNCTIONS)}")
    y = np.clip(y, 1.0, r)
    # int() truncation as in the official code; the clamp is a guard against float round-off only.
    return np.clip((y * unique).astype(np.int64), unique, full)


def draw_uniform(seed: int, step: int, micro_step: int) -> float:
    """The one uniform number behind the depth of (step, micro_step): its own counter-based stream."""
    rng = np.random.default_rng([seed, step, micro_step])
    return float(rng.uniform(_X0, 1.0))


def sample_depth(dist: str, unique: int, full: int, seed: int, step: int, micro_step: int) -> int:
    """Depth D of the forward pass at optimizer step `step` (0-based) and micro-step `micro_step`."""
    if unique >= full:
        return full
    return int(depth_from_uniform(dist, draw_uniform(seed, step, micro_step), unique, full))
