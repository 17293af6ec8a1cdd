"""Depth plans, growth maps (method spec sections 2-3) and the stage schedule."""
import pytest

from apollo.plan import depth_plan, growth_map
from apollo.schedule import StageSchedule


@pytest.mark.parametrize("unique,depth,expected", [
    (3, 12, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]),
    (3, 7, [0, 0, 0, 1, 1, 2, 2]),
    (1, 4, [0, 0, 0, 0]),
    (12, 12, list(range(12))),
])
def test_extend_plan_examples(unique, depth, expected):
    assert depth_plan(unique, depth, "extend") == expected


@pytest.mark.parametrize("unique,depth,expected", [
    (3, 6, [0, 1, 2, 0, 1, 2]), (3, 5, [0, 1, 2, 1, 2]), (3, 4, [0, 1, 2, 2]), (3, 3, [0, 1, 2]),
])
def test_stack_plan_examples(unique, depth, expected):
    assert depth_plan(unique, depth, "stack") == expected


def test_extend_matches_official_float_formula():
    """Same lists as the official int(k / (D / U)) for every U, D <= 24 except one float round-off case:
    at U=14, D=18 the official form gives int(6.9999999) = 6 at k=9, where k*U/D is exactly 7."""
    differ = [(u, d) for u in range(1, 25) for d in range(u, 25)
              if depth_plan(u, d) != [int(k / (d / u)) for k in range(d)]]
    assert differ == [(14, 18)]


@pytest.mark.parametrize("old,new,method,expected", [
    (1, 3, "extend", [0, 0, 0]), (3, 6, "extend", [0, 0, 1, 1, 2, 2]),
    (6, 12, "extend", [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]), (3, 6, "stack", [0, 1, 2, 0, 1, 2]),
])
def test_growth_maps(old, new, method, expected):
    assert growth_map(old, new, method) == expected


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError):
        depth_plan(4, 3)
    with pytest.raises(ValueError, match="grow_method"):
        depth_plan(2, 4, "zigzag")


def test_schedule_from_epochs_counts_optimizer_steps():
    s = StageSchedule.from_epochs((1, 3, 6, 12), (1, 2, 5, 10), steps_per_epoch=10)
    assert s.end_steps == (10, 20, 50, 100)
    assert [s.unique_layers(t) for t in (0, 9, 10, 19, 20, 49, 50, 99, 150)] == [1, 1, 3, 3, 6, 6, 12, 12, 12]
    assert [t for t in range(100) if s.grows_at(t)] == [10, 20, 50]
    assert s.stage_index(0) == 0 and s.stage_index(99) == 3


def test_single_stage_never_grows():
    s = StageSchedule.single_stage(12, 30)
    assert all(s.unique_layers(t) == 12 and not s.grows_at(t) for t in range(40))
