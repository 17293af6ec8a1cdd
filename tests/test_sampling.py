"""Depth sampling against the method spec's figures (section 1), and its purity."""
import numpy as np
import pytest

from apollo.sampling import DIST_FUNCTIONS, depth_from_uniform, draw_uniform, sample_depth

N = 200_000
X = np.random.default_rng(0).uniform(1e-6, 1.0, N)


def _se(p):  # 5 standard errors of a proportion over N draws
    return 5 * np.sqrt(p * (1 - p) / N)


@pytest.mark.parametrize("unique,p_low,mean,p_full", [(1, 0.735, 1.77, None), (3, 0.637, 4.22, None),
                                                       (6, 0.649, 7.13, 0.065), (12, 1.0, 12.0, 1.0)])
def test_lvps_matches_spec(unique, p_low, mean, p_full):
    d = depth_from_uniform("lvps", X, unique, 12)
    assert abs((d == unique).mean() - p_low) < _se(p_low) + 1e-3
    assert abs(d.mean() - mean) < 0.01 + 5 * d.std() / np.sqrt(N)
    if p_full is not None:
        assert abs((d == 12).mean() - p_full) < _se(p_full) + 1e-3
    assert d.min() >= unique and d.max() <= 12


@pytest.mark.parametrize("unique", [1, 3, 6])
def test_uniform_is_flat_over_unique_to_full(unique):
    d = depth_from_uniform("uniform", X, unique, 12)
    counts = np.bincount(d, minlength=13)[unique:]
    share = 1 / (13 - unique)
    assert np.all(np.abs(counts / N - share) < _se(share))


def test_sigmoid_and_constants():
    d = depth_from_uniform("sigmoid", X, 3, 12)
    assert d.min() == 3 and d.max() == 12 and 6 < d.mean() < 9  # symmetric S-curve between U and L
    assert np.all(depth_from_uniform("constant_high", X[:10], 3, 12) == 12)
    assert np.all(depth_from_uniform("constant_low", X[:10], 3, 12) == 3)


def test_draw_is_pure_function_of_seed_step_micro():
    a = [sample_depth("lvps", 3, 12, seed=7, step=s, micro_step=m) for s in range(50) for m in range(2)]
    np.random.seed(123)  # global RNGs must not matter
    import random, torch
    random.seed(5), torch.manual_seed(5)
    b = [sample_depth("lvps", 3, 12, seed=7, step=s, micro_step=m) for s in range(50) for m in range(2)]
    assert a == b
    assert draw_uniform(7, 3, 0) != draw_uniform(7, 3, 1) != draw_uniform(8, 3, 0)


def test_draws_do_not_touch_global_rng():
    import torch
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for s in range(20):
        sample_depth("lvps", 1, 12, seed=1, step=s, micro_step=0)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_dist_function():
    with pytest.raises(ValueError, match="unknown dist_function"):
        depth_from_uniform("nope", X[:3], 3, 12)
    assert set(DIST_FUNCTIONS) == {"lvps", "uniform", "sigmoid", "constant_high", "constant_low"}
