"""DoCo, ESD and CA on both presets' tiny bundles: what they train, what they log, how they fail."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import fresh, random_latents

from cdc.errors import NaNLossError
from cdc.lora import lora_parameters
from cdc.lora_io import save_lora
from cdc.losses import add_noise, noisy_latents, pred_eps, pred_x0, target_for
from cdc.methods import ca as ca_mod
from cdc.methods import doco, esd
from cdc.methods.ca import train_ca
from cdc.methods.doco import train_doco
from cdc.methods.esd import train_esd
from cdc.methods.train import make_generator

TARGETS = ["a church", "a small church"]
ANCHORS = ["a house", "a small house"]
FAST = {"steps": 3, "batch_size": 2, "lora_rank": 2}
DOCO_FAST = {**FAST, "warmup_steps": 1, "d_width": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(params, method: str, **overrides):
    """The smoke params' config of `method` with the fast overrides, then `overrides`, applied."""
    fast = DOCO_FAST if method == "doco" else FAST
    return dataclasses.replace(getattr(params.erase, method), **{**fast, **overrides})


def _run(method: str, bundle, params, **overrides):
    """Run one method for a few steps on a fresh copy of `bundle`."""
    bundle = fresh(bundle)
    lat = random_latents(bundle)
    cfg = _cfg(params, method, **overrides)
    if method == "doco":
        return bundle, *train_doco(bundle, TARGETS, ANCHORS, lat, cfg, progress=False)
    if method == "esd":
        return bundle, *train_esd(bundle, TARGETS, lat, cfg, progress=False)
    return bundle, *train_ca(bundle, TARGETS, ANCHORS, lat, cfg, progress=False)


@pytest.fixture(params=["sd", "world"])
def bundle(request, tiny_sd_bundle, tiny_world_bundle):
    return tiny_sd_bundle if request.param == "sd" else tiny_world_bundle


@pytest.mark.parametrize("method", ["doco", "esd", "ca"])
def test_method_trains_only_the_lora(method, bundle, smoke_params):
    base = {n: p.detach().clone() for n, p in bundle.unet.named_parameters()}
    fresh, unet, history = _run(method, bundle, smoke_params, log_every=1)
    assert unet is fresh.unet
    for name, p in unet.named_parameters():
        if ".lora_" in name:
            continue
        assert torch.equal(p, base[name.replace(".base_layer", "")]), f"base weight {name} changed"
    assert any(p.abs().sum() > 0 for n, p in unet.named_parameters() if ".lora_B." in n)
    keys = {"doco": doco.HISTORY_KEYS, "esd": esd.HISTORY_KEYS, "ca": ca_mod.HISTORY_KEYS}[method]
    assert [r["step"] for r in history] == [1, 2, 3]
    for row in history:
        assert tuple(row) == keys
        assert all(v is None or math.isfinite(v) for v in row.values())
    if method == "doco":
        assert history[0]["loss_adv"] is None  # warm-up: discriminator only
        assert all(history[-1][k] is not None for k in keys)


@pytest.mark.parametrize(
    "overrides",
    [
        {"surgery": "pcgrad", "d_input": "eps", "d_gets_adv_grads": True, "d_norm": "instance"},
        {"surgery": "sum", "detach_first_token": False, "lora_group": "full", "d_layers": 1, "log_every": 2},
    ],
)
def test_doco_switches_run(overrides, tiny_world_bundle, smoke_params):
    _, _, history = _run("doco", tiny_world_bundle, smoke_params, **{"log_every": 1, **overrides})
    assert [r["step"] for r in history] == ([2, 3] if overrides.get("log_every") else [1, 2, 3])
    assert math.isfinite(history[-1]["loss_adv"])


class ToyText:
    """A stand-in text encoder whose target and anchor contexts are far apart (a clear domain gap)."""

    def encode(self, prompts: list[str]) -> torch.Tensor:
        v = torch.randn(4, 384, generator=torch.Generator().manual_seed(0)) * 30
        return torch.stack([v if "church" in p else -v for p in prompts])  # (B, 4, 384)


@pytest.mark.slow
def test_doco_discriminator_learns_then_generator_fools_it(tiny_world_bundle, smoke_params):
    bundle = dataclasses.replace(fresh(tiny_world_bundle), text=ToyText())
    cfg = dataclasses.replace(
        smoke_params.erase.doco, steps=32, warmup_steps=24, batch_size=8, lr=1e-2, d_lr=2e-3, d_width=32,
        surgery="sum", prior_weight=0.0, log_every=1,
    )
    lat = random_latents(bundle, n=16, seed=1)
    _, history = train_doco(bundle, ["a church", "the church"], ["a house", "the house"], lat, cfg, progress=False)
    warm, gen = history[:24], history[24:]
    first_d = sum(r["loss_d"] for r in warm[:4]) / 4
    last = warm[-4:]
    assert sum(r["loss_d"] for r in last) / 4 < first_d - 0.3
    assert min((r["d_real_acc"] + r["d_fake_acc"]) / 2 for r in last) > 0.75
    assert sum(r["loss_adv"] for r in gen[-4:]) / 4 < gen[0]["loss_adv"] - 0.3


def test_same_seed_same_lora(tiny_world_bundle, smoke_params):
    runs = [_run("doco", tiny_world_bundle, smoke_params, seed=s)[1] for s in (3, 3, 4)]
    a, b, c = ([p.detach() for p in lora_parameters(u)] for u in runs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c))


def test_nan_loss_stops_and_nothing_is_saved(tiny_world_bundle, tmp_path, smoke_params):
    bundle = fresh(tiny_world_bundle)
    lat = random_latents(bundle)
    lat[:] = float("nan")
    out = tmp_path / "lora"
    with pytest.raises(NaNLossError, match=r"step 1"):
        unet, _ = train_doco(bundle, TARGETS, ANCHORS, lat, _cfg(smoke_params, "doco"), progress=False)
        save_lora(unet, out, {"method": "doco"})
    assert not out.exists()
    with pytest.raises(NaNLossError, match="ESD: loss"):
        train_esd(fresh(tiny_world_bundle), TARGETS, lat, _cfg(smoke_params, "esd"), progress=False)


@pytest.mark.parametrize(
    ("targets", "anchors", "match"),
    [
        (TARGETS, TARGETS, "anchor equals target"),
        (["a church"], ["A Church "], "anchor equals target"),
        ([], [], "empty"),
        (TARGETS, ANCHORS[:1], "pair one to one"),
        (["a church", ""], ANCHORS, "empty prompts"),
        (TARGETS, [None] * len(TARGETS), "a list of prompts"),
        ("a church", "a house", "not one string"),
    ],
)
def test_bad_prompts_are_rejected(targets, anchors, match, tiny_world_bundle, smoke_params):
    lat = random_latents(tiny_world_bundle)
    for train, cfg in ((train_doco, _cfg(smoke_params, "doco")), (train_ca, _cfg(smoke_params, "ca"))):
        with pytest.raises(ValueError, match=match):
            train(tiny_world_bundle, targets, anchors, lat, cfg, progress=False)
    assert not getattr(tiny_world_bundle.unet, "peft_config", None)  # rejected before any change


def test_the_empty_prompt_is_an_anchor(tiny_world_bundle, smoke_params, one_thread):
    """Mapping the target onto the unconditional images (an anchor arm) trains like any other anchor."""
    lat = random_latents(tiny_world_bundle)
    for train, cfg in ((train_doco, _cfg(smoke_params, "doco")), (train_ca, _cfg(smoke_params, "ca"))):
        bundle = fresh(tiny_world_bundle)
        _, history = train(bundle, TARGETS, [""] * len(TARGETS), lat, cfg, progress=False)
        assert history and getattr(bundle.unet, "peft_config", None)


def test_bad_latents_and_config_are_rejected(tiny_world_bundle, smoke_params):
    lat = random_latents(tiny_world_bundle)
    doco_cfg, esd_cfg = _cfg(smoke_params, "doco"), _cfg(smoke_params, "esd")
    with pytest.raises(ValueError, match="channels"):
        train_doco(tiny_world_bundle, TARGETS, ANCHORS, lat[:, :4], doco_cfg, progress=False)
    # Unknown modes and loop sizes that cannot run are now refused when the config is built.
    with pytest.raises(ValueError, match="surgery"):
        dataclasses.replace(doco_cfg, surgery="proj")
    with pytest.raises(ValueError, match="d_input"):
        dataclasses.replace(doco_cfg, d_input="img")
    with pytest.raises(ValueError, match="warmup_steps"):
        dataclasses.replace(doco_cfg, warmup_steps=doco_cfg.steps)
    with pytest.raises(ValueError, match="steps"):
        dataclasses.replace(esd_cfg, steps=0)
    with pytest.raises(ValueError, match="lora_group"):
        dataclasses.replace(esd_cfg, lora_group="everything")
    with pytest.raises(ValueError, match="target_prompts is empty"):
        train_esd(tiny_world_bundle, [], lat, esd_cfg, progress=False)
    with pytest.raises(ValueError, match="prompt index"):
        train_esd(tiny_world_bundle, TARGETS, lat, esd_cfg, target_index=[0, 1, 2, 3], progress=False)
    assert not getattr(tiny_world_bundle.unet, "peft_config", None)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_algebra_matches_diffusers(kind):
    from diffusers import DDPMScheduler

    # SD's schedule: with a cosine one, x0 from eps at t=999 divides by sqrt(ab) ~ 0
    sched = DDPMScheduler(prediction_type=kind, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0 = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    x_t, noise, t = noisy_latents(sched, x0, make_generator(1))
    assert torch.allclose(x_t, sched.add_noise(x0, noise, t), atol=1e-6)
    assert torch.allclose(add_noise(sched, x0, noise, t), x_t)
    target = target_for(sched, x0, noise, t)  # a perfect model's output
    if kind == "v_prediction":
        assert torch.allclose(target, sched.get_velocity(x0, noise, t), atol=1e-6)
    assert torch.allclose(pred_x0(sched, target, x_t, t), x0, atol=1e-3)
    assert torch.allclose(pred_eps(sched, target, x_t, t), noise, atol=1e-3)
