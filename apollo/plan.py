"""Which unique layer each of D layer positions runs (method spec, sections 2 and 3).

The same map serves the forward pass (U unique layers spread over D positions) and growth at a
stage boundary (U_old unique layers spread over U_new new ones).
"""
from __future__ import annotations

GROW_METHODS = ("extend", "stack")


def depth_plan(unique: int, depth: int, method: str = "extend") -> list[int]:
    """Unique-layer index for each of `depth` positions.

    extend: contiguous blocks, plan[k] = floor(k * U / D)  (U=3, D=7 -> 0,0,0,1,1,2,2).
    stack: cycle 0..U-1; a last partial cycle uses the top-most layers (U=3, D=5 -> 0,1,2,1,2).
    """
    if unique < 1 or depth < unique:
        raise ValueError(f"need 1 <= unique <= depth, got unique={unique}, depth={depth}")
    if method == "extend":
        # Integer arithmetic. The official float form int(k / (D / U)) agrees for every U, D <= 24 but
        # (U=14, D=18), where round-off puts position 9 on layer 6 instead of 7 (tested).
        return [k * unique // depth for k in range(depth)]
    if method == "stack":
        full_cycles, rest = divmod(depth, unique)
        return list(range(unique)) * full_cycles + list(range(unique - rest, unique))
    raise ValueError(f"unknown grow_method {method!r}; choose from {', '.join(GROW_METHODS)}")


def growth_map(old_unique: int, new_unique: int, method: str = "extend") -> list[int]:
    """New unique layer j becomes a copy of old unique layer growth_map[j]."""
    return depth_plan(old_unique, new_unique, method)
