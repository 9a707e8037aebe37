"""DoCo's public step API: `doco_run` + `doco_step` is the training loop, and its report makes sense."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import fresh, random_latents

from cdc.methods.doco import HISTORY_KEYS, StepReport, doco_run, doco_step, train_doco

TARGETS = ["a church", "a small church"]
ANCHORS = ["a house", "a small house"]
FAST = {"steps": 5, "warmup_steps": 2, "batch_size": 2, "log_every": 1, "lora_rank": 2, "d_width": 8}

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(smoke_params, **overrides):
    return dataclasses.replace(smoke_params.erase.doco, **{**FAST, **overrides})


def _lora(unet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if ".lora_" in n}


def _steps(bundle, cfg, n: int) -> tuple[list[StepReport], list[str], dict[str, torch.Tensor]]:
    """Run steps 1..n through the public API on a fresh copy: (reports, LoRA names, LoRA tensors)."""
    run_bundle = fresh(bundle)
    with doco_run(run_bundle, TARGETS, ANCHORS, random_latents(run_bundle), cfg) as state:
        reports = [doco_step(state, step) for step in range(1, n + 1)]
    return reports, state.names, _lora(run_bundle.unet)


@pytest.mark.parametrize(
    "overrides",
    [{"surgery": "cosine"}, {"surgery": "pcgrad", "d_input": "eps", "d_gets_adv_grads": True, "log_every": 2}],
)
def test_step_loop_is_train_doco(tiny_world_bundle, smoke_params, overrides):
    cfg = _cfg(smoke_params, **overrides)
    run_bundle = fresh(tiny_world_bundle)
    unet, history = train_doco(run_bundle, TARGETS, ANCHORS, random_latents(run_bundle), cfg, progress=False)
    reports, _, lora = _steps(tiny_world_bundle, cfg, cfg.steps)
    trained = _lora(unet)
    assert lora.keys() == trained.keys() and lora
    for name in lora:
        assert torch.equal(lora[name], trained[name]), name  # bit-identical: same RNG draws, same ops
    logged = [r.history_row(0.0) for r in reports if r.step % cfg.log_every == 0 or r.step == cfg.steps]
    assert [{**row, "seconds": 0.0} for row in history] == logged
    assert all(tuple(row) == HISTORY_KEYS for row in logged)


def test_warmup_step_trains_only_d(tiny_world_bundle, smoke_params):
    cfg = _cfg(smoke_params)
    run_bundle = fresh(tiny_world_bundle)
    with doco_run(run_bundle, TARGETS, ANCHORS, random_latents(run_bundle), cfg) as state:
        before = _lora(run_bundle.unet)
        d_before = [p.detach().clone() for p in state.d_params]
        report = doco_step(state, 1)
    assert not report.trained_lora
    assert report.loss_adv is None and report.g_a is None and report.surgery is None
    assert all(torch.equal(p, before[n]) for n, p in _lora(run_bundle.unet).items())
    assert any(not torch.equal(p, q) for p, q in zip(state.d_params, d_before))
    assert report.history_row(1.0)["loss_adv"] is None
    with pytest.raises(ValueError, match="warm-up"):
        report.per_tensor(state.names)


def test_report_of_a_lora_step(tiny_world_bundle, smoke_params):
    cfg = _cfg(smoke_params, surgery="cosine", lam=1.0)
    # Step 4 = the second LoRA update: lora_B is no longer zero, so lora_A has gradients too.
    reports, names, _ = _steps(tiny_world_bundle, cfg, 4)
    report = reports[-1]
    assert report.trained_lora and report.step == 4

    # D's patch logits: (B, 1, p, p) for real and fake, detached, on the CPU.
    assert report.logits_real.shape == report.logits_fake.shape
    assert report.logits_real.shape[:2] == (cfg.batch_size, 1) and report.logits_real.ndim == 4
    for logits in (report.logits_real, report.logits_fake):
        assert logits.device.type == "cpu" and not logits.requires_grad
    assert 0.0 <= report.d_real_acc <= 1.0 and 0.0 <= report.d_fake_acc <= 1.0

    table = report.per_tensor(names)
    n = len(names)
    assert n == len(report.g_a) == len(report.g_b) == len(report.update) > 0
    assert all(len(column) == n for column in table.values())
    assert all(".lora_" in name for name in table["tensor"])
    cos_ab, cos_ub = torch.tensor(table["cos_ab"]), torch.tensor(table["cos_update_b"])
    assert ((cos_ab >= -1 - 1e-6) & (cos_ab <= 1 + 1e-6)).all()
    assert ((cos_ub >= -1 - 1e-6) & (cos_ub <= 1 + 1e-6)).all()
    assert (cos_ab != 0).any(), "every LoRA tensor had a zero gradient: nothing to check"

    # The cosine rule adjusts exactly the tensors where g_a and g_b conflict, and only moves them
    # towards g_b; the others are left as they were.
    changed = torch.tensor(table["changed"])
    assert torch.equal(changed, cos_ab < 0)
    assert (cos_ub[changed] >= cos_ab[changed]).all()
    assert torch.equal(cos_ub[~changed], cos_ab[~changed])
    assert report.surgery.fired == pytest.approx(changed.float().mean().item())
    assert -1.0 <= report.surgery.cosine <= 1.0

    # g_a and g_b are clipped to max_grad_norm (globally) before the surgery.
    for grads in (report.g_a, report.g_b):
        assert float(torch.cat([g.flatten() for g in grads]).norm()) <= cfg.max_grad_norm * (1 + 1e-5)
    assert all(v >= 0 for v in report.norms_before_clip)
