"""Gradient surgery: pure tensor algebra, checked on hand-made gradients."""

from __future__ import annotations

import math

import pytest
import torch

from cdc.methods.surgery import clip_grads, combine, cosine_rule, global_cosine, pcgrad


def _dot(a, b):
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def _grads(seed: int, shapes=((3, 4), (5,), (2, 2, 2))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("mode", ["pcgrad", "cosine"])
def test_orthogonal_gradients_are_untouched(mode):
    g_a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]
    g_b = [torch.tensor([0.0, 3.0]), torch.tensor([5.0, 0.0])]
    out, stats = combine(g_a, g_b, mode=mode, lam=1.0)
    for o, a in zip(out, g_a):
        assert torch.equal(o, a)
    assert stats.fired == 0.0 and stats.cosine == 0.0


@pytest.mark.parametrize("per_tensor", [True, False])
def test_pcgrad_removes_the_conflict(per_tensor):
    g_b = _grads(1)
    g_a = [-2.0 * b + 0.1 * r for b, r in zip(g_b, _grads(2))]  # strongly conflicting
    assert _dot(g_a, g_b) < 0
    out, fired = pcgrad(g_a, g_b, lam=1.0, per_tensor=per_tensor)
    assert fired == 1.0
    if per_tensor:
        for o, b in zip(out, g_b):
            assert _dot([o], [b]) >= -1e-6
    assert _dot(out, g_b) >= -1e-6


@pytest.mark.parametrize("mode", ["pcgrad", "cosine", "sum"])
def test_lambda_zero_is_the_identity(mode):
    g_a, g_b = _grads(3), [-x for x in _grads(3)]
    out, _ = combine(g_a, g_b, mode=mode, lam=0.0, weight=0.0)
    for o, a in zip(out, g_a):
        assert torch.allclose(o, a)


@pytest.mark.parametrize("mode", ["pcgrad", "cosine"])
def test_agreeing_gradients_are_untouched(mode):
    g_b = _grads(4)
    g_a = [2.0 * b + 0.01 * r for b, r in zip(g_b, _grads(5))]
    out, stats = combine(g_a, g_b, mode=mode, lam=1.0)
    assert all(torch.equal(o, a) for o, a in zip(out, g_a))
    assert stats.fired == 0.0 and stats.cosine > 0.9


def test_hand_computed_examples():
    g_a, g_b = [torch.tensor([2.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    # cosine rule: cos = -1/sqrt(2); g_a - cos * g_b/||g_b|| = [2, 0] + 0.5 * [-1, 1]
    out, fired = cosine_rule(g_a, g_b, lam=1.0)
    assert torch.allclose(out[0], torch.tensor([1.5, 0.5])) and fired == 1.0
    # PCGrad: <a,b> = -2, ||b||^2 = 2: g_a + g_b
    out, _ = pcgrad(g_a, g_b, lam=1.0)
    assert torch.allclose(out[0], torch.tensor([1.0, 1.0]))
    out, _ = pcgrad(g_a, g_b, lam=0.5)
    assert torch.allclose(out[0], torch.tensor([1.5, 0.5]))
    assert math.isclose(global_cosine(g_a, g_b), -1 / math.sqrt(2), rel_tol=1e-6)


def test_cosine_rule_overcorrects_small_gradients_as_released():
    # ||g_a|| < 1 (after clipping): the HEAD rule leaves a positive component along g_b.
    g_a, g_b = [torch.tensor([0.1, 0.0])], [torch.tensor([-1.0, 1.0])]
    out, _ = cosine_rule(g_a, g_b, lam=1.0)
    assert _dot(out, g_b) > 0


def test_per_tensor_fraction_and_global_mode_differ():
    g_a = [torch.tensor([1.0]), torch.tensor([1.0])]
    g_b = [torch.tensor([-1.0]), torch.tensor([3.0])]  # tensor 0 conflicts, overall they agree
    _, fired = pcgrad(g_a, g_b, per_tensor=True)
    assert fired == 0.5
    out, fired = pcgrad(g_a, g_b, per_tensor=False)
    assert fired == 0.0 and all(torch.equal(o, a) for o, a in zip(out, g_a))


@pytest.mark.parametrize("mode", ["pcgrad", "cosine", "sum"])
def test_zero_gradients_are_safe(mode):
    g_a = _grads(6)
    zeros = [torch.zeros_like(x) for x in g_a]
    for a, b in ((g_a, zeros), (zeros, g_a), (zeros, zeros)):
        out, stats = combine(a, b, mode=mode, lam=1.0, weight=1.0)
        assert all(torch.isfinite(o).all() for o in out)
        assert math.isfinite(stats.cosine)
    out, _ = combine(g_a, zeros, mode=mode)
    assert all(torch.equal(o, a) for o, a in zip(out, g_a))


def test_sum_mode_and_bad_input():
    g_a, g_b = _grads(7), _grads(8)
    out, stats = combine(g_a, g_b, mode="sum", weight=0.25)
    assert all(torch.allclose(o, a + 0.25 * b) for o, a, b in zip(out, g_a, g_b))
    assert stats.fired == 0.0
    with pytest.raises(ValueError, match="unknown surgery mode"):
        combine(g_a, g_b, mode="project")
    with pytest.raises(ValueError, match="shapes differ"):
        combine(g_a, [torch.zeros(1)] * 3)
    with pytest.raises(ValueError, match="length"):
        combine(g_a, g_b[:2])


def test_clip_grads():
    g = [torch.tensor([3.0, 4.0]), torch.tensor([0.0])]  # norm 5
    out, norm = clip_grads(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert math.sqrt(_dot(out, out)) == pytest.approx(1.0, rel=1e-4)
    out, _ = clip_grads(g, None)
    assert torch.equal(out[0], g[0])
    out, _ = clip_grads(g, 10.0)
    assert torch.equal(out[0], g[0])
