"""Concept-preserving gradient surgery: pure tensor algebra over lists of gradients.

`g_a` is the unlearning gradient (adversarial loss), `g_b` the preservation gradient (prior loss);
both are lists of tensors with matching shapes, one per trainable parameter. In both released
DoCo rules only the adjusted g_a is applied: g_b sets a direction and is never added.

- `pcgrad`: DoCo's first release (yongliang-wu/DoCo@9214ec4, gradient_clip.py): exact PCGrad
  projection g_a - lam <g_a,g_b>/||g_b||^2 g_b where <g_a,g_b> < 0, in a loop over parameter
  tensors (per_tensor=True, the default); per_tensor=False projects the concatenated vector once.
- `cosine`: DoCo HEAD (ebf6ff4): per tensor, if cos < 0: g_a - lam cos g_b/||g_b||. The step is a
  unit direction scaled by the cosine, so with lam = 1 and ||g_a|| < 1 it over-corrects past
  orthogonality; reproduced as released.
- `sum`: g_a + weight g_b, the plain weighted-sum ablation (no surgery).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("pcgrad", "cosine", "sum")
# A squared norm below this counts as a zero gradient (nothing to project on). Tiny on purpose:
# LoRA gradients after clipping can legitimately have norms of 1e-8.
_EPS = 1e-30


@dataclass
class SurgeryStats:
    """What the surgery saw: global cosine(g_a, g_b) and the share of tensors it changed."""

    cosine: float  # over all tensors concatenated; 0.0 when either gradient is zero
    fired: float  # fraction of tensors (or 1.0/0.0 for a global projection) that were adjusted


def _f(x: Tensor) -> Tensor:
    """At least float32 (fp16/bf16 sums lose the small entries; float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Sum of elementwise products over all tensors, in at least float32."""
    return sum((_f(x) * _f(y)).sum() for x, y in zip(a, b, strict=True))


def _check(g_a: Sequence[Tensor], g_b: Sequence[Tensor]) -> None:
    """Both lists must pair tensors of equal shape."""
    if len(g_a) != len(g_b):
        raise ValueError(f"gradient lists differ in length: {len(g_a)} vs {len(g_b)}")
    for i, (a, b) in enumerate(zip(g_a, g_b)):
        if a.shape != b.shape:
            raise ValueError(f"gradient {i} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def global_cosine(g_a: Sequence[Tensor], g_b: Sequence[Tensor]) -> float:
    """Cosine between the two gradients seen as one concatenated vector (0.0 if either is zero)."""
    na, nb = _dot(g_a, g_a).sqrt(), _dot(g_b, g_b).sqrt()
    if float(na) * float(nb) <= _EPS:
        return 0.0
    return float(_dot(g_a, g_b) / (na * nb))


def _per_tensor(g_a: Sequence[Tensor], g_b: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-tensor <a,b>, ||a||^2, ||b||^2 as (T,) tensors (vectorised: no host syncs)."""
    dots = torch.stack([(_f(a) * _f(b)).sum() for a, b in zip(g_a, g_b)])
    na2 = torch.stack([_f(a).pow(2).sum() for a in g_a])
    nb2 = torch.stack([_f(b).pow(2).sum() for b in g_b])
    return dots, na2, nb2


def tensor_cosines(g_a: Sequence[Tensor], g_b: Sequence[Tensor]) -> Tensor:
    """Cosine between g_a[i] and g_b[i] for each tensor i, as a float (T,) tensor; 0 where either is
    zero (the cosine rule's convention: such a tensor is never adjusted)."""
    _check(g_a, g_b)
    if not g_a:
        return torch.zeros(0)
    dots, na2, nb2 = _per_tensor(g_a, g_b)
    norms = na2.sqrt() * nb2.sqrt()  # as cosine_rule computes it
    return torch.where(norms > _EPS, dots / norms.clamp_min(_EPS), torch.zeros_like(dots))


def _apply(g_a: Sequence[Tensor], g_b: Sequence[Tensor], coef: Tensor) -> list[Tensor]:
    """g_a[i] - coef[i] g_b[i] for each tensor, in g_a's dtype."""
    return [a - (c * _f(b)).to(a.dtype) for a, b, c in zip(g_a, g_b, coef)]


def pcgrad(
    g_a: Sequence[Tensor], g_b: Sequence[Tensor], lam: float = 1.0, per_tensor: bool = True
) -> tuple[list[Tensor], float]:
    """Remove lam x the component of g_a along g_b where they conflict; returns (grads, fired)."""
    _check(g_a, g_b)
    if not g_a:
        return [], 0.0
    dots, _, nb2 = _per_tensor(g_a, g_b)
    if not per_tensor:
        dots, nb2 = dots.sum().expand(len(g_a)), nb2.sum().expand(len(g_a))
    # A zero g_b has no direction: leave g_a alone instead of dividing by zero.
    conflict = (dots < 0) & (nb2 > _EPS)
    coef = torch.where(conflict, lam * dots / nb2.clamp_min(_EPS), torch.zeros_like(dots))
    fired = float(conflict.float().mean())  # global: all entries equal, so 1.0 or 0.0
    return _apply(g_a, g_b, coef), fired


def cosine_rule(g_a: Sequence[Tensor], g_b: Sequence[Tensor], lam: float = 1.0) -> tuple[list[Tensor], float]:
    """DoCo HEAD rule, per tensor: if cos < 0, g_a - lam cos g_b/||g_b||; returns (grads, fired)."""
    _check(g_a, g_b)
    if not g_a:
        return [], 0.0
    dots, na2, nb2 = _per_tensor(g_a, g_b)
    na, nb = na2.sqrt(), nb2.sqrt()
    # The released code adds 1e-8 to both norms; a zero gradient has no direction, so skip it.
    ok = (na * nb) > _EPS
    cos = torch.where(ok, dots / (na * nb).clamp_min(_EPS), torch.zeros_like(dots))
    conflict = ok & (cos < 0)
    # g_a - lam cos (g_b / ||g_b||) == g_a - (lam cos / ||g_b||) g_b
    coef = torch.where(conflict, lam * cos / nb.clamp_min(_EPS), torch.zeros_like(dots))
    return _apply(g_a, g_b, coef), float(conflict.float().mean())


def combine(
    g_a: Sequence[Tensor],
    g_b: Sequence[Tensor],
    mode: str = "cosine",
    lam: float = 1.0,
    weight: float = 1.0,
    per_tensor: bool = True,
) -> tuple[list[Tensor], SurgeryStats]:
    """The update direction for `mode` ("pcgrad", "cosine" or "sum") plus surgery statistics.

    Args:
        lam: surgery strength for pcgrad/cosine (0 gives g_a unchanged).
        weight: weight of g_b in "sum" mode only.
        per_tensor: pcgrad only; False projects over all tensors at once.
    """
    _check(g_a, g_b)
    cos = global_cosine(g_a, g_b)
    if mode == "pcgrad":
        out, fired = pcgrad(g_a, g_b, lam, per_tensor)
    elif mode == "cosine":
        out, fired = cosine_rule(g_a, g_b, lam)
    elif mode == "sum":
        out, fired = [a + weight * b for a, b in zip(g_a, g_b)], 0.0
    else:
        raise ValueError(f"unknown surgery mode {mode!r} (known: {', '.join(MODES)})")
    return out, SurgeryStats(cosine=cos, fired=fired)


def clip_grads(grads: Sequence[Tensor], max_norm: float | None) -> tuple[list[Tensor], float]:
    """Scale grads so their global L2 norm is at most max_norm (as torch's clip_grad_norm_);
    returns (grads, norm before clipping). None or <= 0 disables clipping."""
    norm = float(_dot(grads, grads).sqrt()) if grads else 0.0
    if not max_norm or max_norm <= 0 or norm <= max_norm:
        return list(grads), norm
    scale = max_norm / (norm + 1e-6)
    return [g * scale for g in grads], norm
