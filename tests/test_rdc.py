"""RDC on the tiny world bundle: the uniform entry point, the adversaries, the surgery, the buffer, the config."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import fresh, random_latents

from cdc.embeddings import token_table
from cdc.losses import noisy_latents, unet_pred
from cdc.methods import rdc
from cdc.methods.advunlearn import attack_loss
from cdc.methods.domain import REAL, bce
from cdc.methods.parallel import Shard
from cdc.methods.rdc import HISTORY_KEYS, RdcConfig, erase, prefix_attack, rdc_run, rdc_step, route_blocks
from cdc.methods.train import ErasureData, make_generator, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["a church", "a small church"]
ANCHORS = ["a house", "a small house"]
FAST = {"steps": 4, "warmup_steps": 1, "batch_size": 2, "log_every": 1, "lora_rank": 2, "d_width": 8}
NEW = {"attack_weight": 1.0, "clean_weight": 1.0, "attack_k": 1, "attack_steps": 1, "attack_lr": 1e-2,
       "buffer_share": 0.5, "buffer_size": 2, "invert_every": 2, "invert_k": 1, "invert_steps": 2, "invert_lr": 2e-2,
       "relearn_weight": 0.0, "relearn_steps": 1, "relearn_lr": 10.0}


def _cfg(smoke_params, **overrides) -> RdcConfig:
    """The smoke DoCo config, shrunk, plus RDC's knobs, then `overrides`."""
    doco = dataclasses.asdict(dataclasses.replace(smoke_params.erase.doco, **FAST))
    return RdcConfig(**{**doco, **NEW, **overrides})


def _data(bundle) -> ErasureData:
    """Two pairs; four seeded target and anchor latents each, alternating between the two prompts."""
    return ErasureData(TARGETS, ANCHORS, target_latents=random_latents(bundle, n=4, seed=1), target_index=[0, 1, 0, 1],
                       anchor_latents=random_latents(bundle, n=4, seed=0), anchor_index=[0, 1, 0, 1])


def _lora(unet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if ".lora_" in n}


def _steps(bundle, cfg, n: int):
    """Steps 1..n on a fresh copy through the step API: (reports, state, the copy)."""
    run_bundle = fresh(bundle)
    with rdc_run(run_bundle, _data(run_bundle), cfg) as state:
        reports = [rdc_step(state, step) for step in range(1, n + 1)]
    return reports, state, run_bundle


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def test_entry_point_trains_deterministically(tiny_world_bundle, smoke_params):
    assert rdc.Config is RdcConfig and set(rdc.NEEDS) == {"target", "anchor"}
    cfg = _cfg(smoke_params, relearn_weight=1.0)
    runs = []
    for _ in range(2):
        run_bundle = fresh(tiny_world_bundle)
        out, history = erase(run_bundle, _data(run_bundle), cfg, progress=False)
        assert out is run_bundle
        runs.append((_lora(out.unet), history))
    (lora, history), (lora2, history2) = runs
    assert lora and any(p.abs().max() > 0 for n, p in lora.items() if "lora_B" in n)  # B starts at 0
    assert all(torch.equal(lora[n], lora2[n]) for n in lora)
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(history) == drop(history2)
    assert [r["step"] for r in history] == [1, 2, 3, 4] and all(tuple(r) == HISTORY_KEYS for r in history)
    assert history[0]["loss_att"] is None and history[0]["loss_d"] is not None  # warm-up: D only
    for row in history[1:]:
        for key in ("loss_d", "loss_att", "loss_clean", "loss_prior", "loss_relearn", "cos_att_prior",
                    "cos_clean_prior", "cos_relearn_prior", "cos_att_clean", "surgery_fired"):
            assert row[key] is not None, key
    assert history[1]["invert_loss_start"] is not None and history[1]["buffer_size"] == 1
    # The step API is the training loop: same draws, same LoRA.
    reports, _, stepped = _steps(tiny_world_bundle, cfg, cfg.steps)
    assert all(torch.equal(p, lora[n]) for n, p in _lora(stepped.unet).items())
    assert drop([r.history_row(0.0) for r in reports]) == drop(history)


def test_entry_point_refusals(tiny_world_bundle, smoke_params):
    cfg = _cfg(smoke_params)
    run_bundle = fresh(tiny_world_bundle)
    with pytest.raises(ValueError, match="data parallelism"):
        erase(run_bundle, _data(run_bundle), cfg, progress=False, shard=Shard(0, 2, mean=lambda t: t))
    with pytest.raises(ValueError, match="target"):
        erase(run_bundle, dataclasses.replace(_data(run_bundle), target_latents=None), cfg, progress=False)


def test_route_blocks_gives_each_block_its_gradient(tiny_world_bundle, smoke_params):
    _, state, run_bundle = _steps(tiny_world_bundle, _cfg(smoke_params), 3)  # B != 0: every LoRA tensor has grads
    unet, params = run_bundle.unet, state.params
    x = random_latents(run_bundle, n=3, seed=4)
    t = torch.tensor([10, 500, 900])
    ctx = torch.cat([state.data.contexts[0][:1], state.data.contexts[1][:1], state.data.contexts[0][1:2]])
    weights = torch.randn(x.shape, generator=make_generator(0))
    with route_blocks(unet, params, [1, 1, 1]) as shadows:
        out = unet_pred(unet, x, t, ctx)
    routed = torch.autograd.grad((out * weights).sum(), [*params, *shadows[0], *shadows[1]])
    m = len(params)
    for i in range(3):
        single = torch.autograd.grad((unet_pred(unet, x[i : i + 1], t[i : i + 1], ctx[i : i + 1]) * weights[i]).sum(),
                                     params)
        for a, b in zip(routed[i * m : (i + 1) * m], single):  # batched vs single rows: float32 round-off only
            assert float((a - b).norm()) <= 1e-3 * float(b.norm()) + 1e-9


def _evaluate_att(state, disc, x_t, t, context) -> float:
    """L_att of the current LoRA on (x_t, t, adversarial context) under a fixed discriminator."""
    with torch.no_grad():
        out = unet_pred(state.unet, x_t, t, context)
        return float(bce(disc(state.to_d(state.scheduler, out, x_t, t)), REAL))


def test_adversary_finds_a_weakness_and_the_step_closes_it(tiny_world_bundle, smoke_params):
    # pcgrad with lam 1 leaves S(g_att) at a non-negative inner product with g_att; the cosine rule with lam > 1 may
    # over-correct (as released DoCo's does) and then a step can trade some L_att for preservation.
    cfg = _cfg(smoke_params, steps=6, attack_steps=8, buffer_share=0.0, lr=1e-2, surgery="pcgrad", lam=1.0)
    run_bundle = fresh(tiny_world_bundle)
    with rdc_run(run_bundle, _data(run_bundle), cfg) as state:
        for step in range(1, 4):  # warm-up, then two LoRA steps: the current model is no longer the original
            rdc_step(state, step)
        # The fast attack lowers its own objective (measured on fixed draws, not the attack's own noise).
        attack = prefix_attack(state, torch.tensor([0, 1]))
        assert len(attack.losses) == cfg.attack_steps and not torch.equal(attack.delta, attack.init)
        gen, start, end = make_generator(11), 0.0, 0.0
        with torch.no_grad():
            for _ in range(4):
                x_t, _, t = noisy_latents(state.scheduler, attack.x0, gen)
                start += float(attack_loss(state.models, x_t, t, attack.tokens, attack.init, attack.context0))
                end += float(attack_loss(state.models, x_t, t, attack.tokens, attack.delta, attack.context0))
        print(f"attack objective on fixed draws: {start / 4:.6f} -> {end / 4:.6f}")
        assert end < start

        # One LoRA step (fresh optimiser: the move is this step's update alone) lowers L_att on its own adversarial
        # contexts and noise, judged by the discriminator of before the step.
        state.optimizer = make_optimizer(state.params, cfg.lr, cfg.weight_decay)
        disc = copy.deepcopy(state.disc)
        before_lora = [p.detach().clone() for p in state.params]
        report = rdc_step(state, 4)
        assert report.buffer_rows == 0 and len(report.attack_losses) == cfg.attack_steps
        after = _evaluate_att(state, disc, report.x_t, report.t, report.context_adv)
        after_lora = [p.detach().clone() for p in state.params]
        with torch.no_grad():
            for p, b in zip(state.params, before_lora):
                p.copy_(b)
        before = _evaluate_att(state, disc, report.x_t, report.t, report.context_adv)
        with torch.no_grad():
            for p, a in zip(state.params, after_lora):
                p.copy_(a)
    print(f"L_att on the step's adversarial contexts: {before:.5f} -> {after:.5f} (report {report.losses['att']:.5f})")
    assert before == pytest.approx(report.losses["att"], rel=1e-5)
    assert after < before * (1 - 1e-4)  # well above float32 round-off


@pytest.mark.parametrize(("surgery", "lam"), [("pcgrad", 1.0), ("cosine", 2.0), ("cosine", 0.5)])
def test_surgery_never_adds_conflict_with_preservation(tiny_world_bundle, smoke_params, surgery, lam):
    cfg = _cfg(smoke_params, surgery=surgery, lam=lam, relearn_weight=0.5, clean_weight=0.7)
    reports, _, _ = _steps(tiny_world_bundle, cfg, cfg.steps)
    weights = {"att": cfg.attack_weight, "clean": cfg.clean_weight, "rel": cfg.relearn_weight}
    conflicts = 0
    for report in reports[1:]:
        g = report.grads
        assert set(g) == {"att", "clean", "rel", "prior"} and set(report.adjusted) == {"att", "clean", "rel"}
        for i, (u, p) in enumerate(zip(report.update, g["prior"])):
            erase_side = sum(w * g[k][i] for k, w in weights.items())
            torch.testing.assert_close(u, sum(w * report.adjusted[k][i] for k, w in weights.items()))
            tol = 1e-6 * float(u.norm() * p.norm()) + 1e-20
            assert _dot(u, p) >= min(0.0, _dot(erase_side, p)) - tol
            for k in weights:  # each term on its own, too
                assert _dot(report.adjusted[k][i], p) >= min(0.0, _dot(g[k][i], p)) - tol
            if surgery == "pcgrad" and lam == 1.0:
                assert _dot(u, p) >= -tol  # exact projection: no negative inner product left
            conflicts += _dot(erase_side, p) < 0
    assert conflicts > 0, "no tensor conflicted with preservation: nothing was checked"


def test_sum_mode_adds_the_prior_once(tiny_world_bundle, smoke_params):
    cfg = _cfg(smoke_params, surgery="sum", prior_weight=0.1, steps=2)
    (_, report), _, _ = _steps(tiny_world_bundle, cfg, 2)
    g = report.grads
    for i, u in enumerate(report.update):
        torch.testing.assert_close(u, g["att"][i] + g["clean"][i] + 0.1 * g["prior"][i])


def test_buffer_fills_and_refreshes(tiny_world_bundle, smoke_params):
    cfg = _cfg(smoke_params, steps=8, invert_every=2, buffer_size=2, buffer_share=1.0)
    run_bundle = fresh(tiny_world_bundle)
    table = token_table(run_bundle.text).float()
    with rdc_run(run_bundle, _data(run_bundle), cfg) as state:
        reports, entries = [], []
        for step in range(1, cfg.steps + 1):
            newest = state.buffer[-1] if state.buffer else None
            reports.append(rdc_step(state, step))
            if reports[-1].inverted:
                entry = state.buffer[-1]
                entries.append(entry)
                assert entry.step == step and len(reports[-1].invert_losses) == cfg.invert_steps
                if newest is None:  # the first starts from a random vocabulary embedding
                    assert (table == entry.start[0]).all(dim=1).any()
                else:  # each later one from the newest entry before it
                    assert torch.equal(entry.start, newest.embedding)
                assert not torch.equal(entry.embedding, entry.start)
    # LoRA steps 1..7 are steps 2..8; an inversion on LoRA steps 1, 3, 5, 7; the buffer keeps the last two.
    assert [r.step for r in reports if r.inverted] == [2, 4, 6, 8]
    assert [r.buffer_size for r in reports] == [0, 1, 1, 2, 2, 2, 2, 2]
    assert [e.step for e in state.buffer] == [6, 8] and state.buffer[0] is entries[-2]
    # buffer_share 1: every adversarial row is a buffer entry's context, and the prefix attack never runs.
    for r in reports[1:]:
        assert r.buffer_rows == cfg.batch_size and r.attack_losses == []
        contexts = torch.stack([e.context[0] for e in state.buffer])  # (2, L', D) at the end
        if r.step == cfg.steps:
            assert all((contexts == row).all(dim=(1, 2)).any() for row in r.context_adv)


def test_config_checks(smoke_params):
    assert _cfg(smoke_params).buffer_share == 0.5
    for field, value in [("buffer_share", 1.5), ("attack_k", 0), ("attack_steps", -1), ("attack_lr", 0.0),
                         ("invert_every", 0), ("invert_steps", 0), ("invert_lr", 0.0), ("buffer_size", 0),
                         ("relearn_steps", 0), ("relearn_lr", 0.0), ("attack_weight", -1.0),
                         ("relearn_weight", float("nan"))]:
        with pytest.raises(ValueError, match=field):
            _cfg(smoke_params, **{field: value})
    with pytest.raises(ValueError, match="attack_weight and clean_weight"):
        _cfg(smoke_params, attack_weight=0.0, clean_weight=0.0, relearn_weight=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        _cfg(smoke_params, steps=2, warmup_steps=2)
    with pytest.raises(TypeError):
        RdcConfig(steps=3)  # no defaults
    # Either erase term alone is a valid arm.
    assert _cfg(smoke_params, attack_weight=0.0).clean_weight == 1.0
    assert _cfg(smoke_params, clean_weight=0.0).attack_weight == 1.0


def test_relearn_term_changes_the_update_and_restores_the_lora(tiny_world_bundle, smoke_params):
    off = _steps(tiny_world_bundle, _cfg(smoke_params, steps=2), 2)[0][-1]
    on = _steps(tiny_world_bundle, _cfg(smoke_params, steps=2, relearn_weight=0.5), 2)[0][-1]
    # The relearner draws last: everything before it is the same step.
    for k in ("att", "clean", "prior"):
        assert all(torch.equal(a, b) for a, b in zip(on.grads[k], off.grads[k])), k
    assert "rel" in on.losses and "rel" not in off.losses
    assert any(not torch.equal(a, b) for a, b in zip(on.update, off.update))
    for u_on, u_off, rel in zip(on.update, off.update, on.adjusted["rel"]):
        torch.testing.assert_close(u_on, u_off + 0.5 * rel)
    # The simulated relearning is undone: the LoRA is as it was.
    cfg = _cfg(smoke_params, relearn_weight=0.5, relearn_steps=2)
    _, state, _ = _steps(tiny_world_bundle, cfg, 3)
    before = [p.detach().clone() for p in state.params]
    x_t, _, t = noisy_latents(state.scheduler, state.data.latents[:2], make_generator(1))
    value, grads = rdc._relearn(state, 3, x_t, t, state.data.contexts[0][:2])
    assert all(torch.equal(p, b) for p, b in zip(state.params, before))
    assert len(grads) == len(state.params) and any(g.abs().max() > 0 for g in grads) and value > 0
