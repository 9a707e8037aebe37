"""AdvUnlearn on the tiny bundles: what it trains, the inner attack, the ESD special case, the encoder files."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch
from helpers import fresh, random_latents

from cdc.embeddings import candidate_ids, insert_prefix
from cdc.encoder_io import TextEncoderError, load_text_encoder, save_text_encoder, trainable_copy
from cdc.losses import mse, noisy_latents, unet_pred
from cdc.methods import advunlearn
from cdc.methods.advunlearn import (
    HISTORY_KEYS,
    AdvUnlearnConfig,
    Models,
    attack_loss,
    attack_trace,
    random_prefix,
    soft_prompt_attack,
    train_advunlearn,
)
from cdc.methods.train import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["a church", "a small church"]
RETAIN = ["a house", "a red car", "a tree"]


def _cfg(params, **overrides) -> AdvUnlearnConfig:
    """The smoke ESD config's shared knobs plus AdvUnlearn's, tiny and fast, then `overrides`."""
    esd = dataclasses.asdict(params.erase.esd)
    fields = {f.name for f in dataclasses.fields(AdvUnlearnConfig)}
    base = {k: v for k, v in esd.items() if k in fields}
    base.update(steps=3, warmup_steps=1, lr=1e-4, batch_size=2, negative_guidance=1.0, retain_weight=0.3,
                retain_batch=2, attack_steps=2, attack_k=1, attack_lr=1e-3, attack_method="pgd",
                module="text_encoder", text_layers=None, lora_rank=2, weight_decay=0.0, log_every=1)
    return AdvUnlearnConfig(**{**base, **overrides})


def _run(bundle, cfg):
    """Train on a fresh copy of `bundle` (own UNet) with seeded random latents: (bundle, module, history)."""
    bundle = fresh(bundle)
    tgt, ret = random_latents(bundle, n=4, seed=1), random_latents(bundle, n=3, seed=2)
    module, history = train_advunlearn(bundle, TARGETS, tgt, RETAIN, ret, cfg, progress=False)
    return bundle, module, history


def _esd_eval(bundle, text, seed: int = 5) -> float:
    """ESD loss of `text` (current encoder) on fixed draws: || e(x_t, t, text(c)) - (2 e_u - e_c) ||^2."""
    x0 = random_latents(bundle, n=4, seed=1)
    prompts = [TARGETS[i % 2] for i in range(4)]
    x_t, _, t = noisy_latents(bundle.scheduler, x0, make_generator(seed))
    with torch.no_grad():
        e_u = unet_pred(bundle.unet, x_t, t, bundle.text.encode([""] * 4))
        e_c = unet_pred(bundle.unet, x_t, t, bundle.text.encode(prompts))
        return float(mse(unet_pred(bundle.unet, x_t, t, text.encode(prompts)), 2 * e_u - e_c))


@pytest.fixture(scope="module")
def erased(tiny_world_bundle, smoke_params):
    """Eight clean ESD steps on the tiny world's text encoder: (bundle, trained encoder, history)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures start before the function-scoped `one_thread`
    out = _run(tiny_world_bundle, _cfg(smoke_params, steps=8, attack_steps=0, lr=3e-4, retain_weight=0.0))
    torch.set_num_threads(n)
    return out


def test_config_checks(smoke_params):
    assert _cfg(smoke_params).attack_method == "pgd"
    with pytest.raises(ValueError, match="warmup_steps"):
        _cfg(smoke_params, steps=3, warmup_steps=3)
    with pytest.raises(ValueError, match="attack_method"):
        _cfg(smoke_params, attack_method="free_at")
    with pytest.raises(ValueError, match="module"):
        _cfg(smoke_params, module="vae")
    with pytest.raises(ValueError, match="text_layers"):
        _cfg(smoke_params, text_layers=0)
    with pytest.raises(TypeError):
        AdvUnlearnConfig(steps=3)  # no defaults


def test_text_mode_trains_encoder_layers_only(tiny_world_bundle, smoke_params):
    base_unet = {n: p.detach().clone() for n, p in tiny_world_bundle.unet.named_parameters()}
    base_text = {n: p.detach().clone() for n, p in tiny_world_bundle.text.model.named_parameters()}
    bundle, trained, history = _run(tiny_world_bundle, _cfg(smoke_params))
    assert trained is not bundle.text and not any(p.requires_grad for p in trained.model.parameters())
    for name, p in bundle.unet.named_parameters():
        assert torch.equal(p, base_unet[name]), f"UNet weight {name} changed"
    for name, p in bundle.text.model.named_parameters():
        assert torch.equal(p, base_text[name]), f"the original encoder's {name} changed"
    changed = {n for n, p in trained.model.named_parameters() if not torch.equal(p, base_text[n])}
    assert changed and all(n.startswith("encoder.layer.") for n in changed)  # embeddings and pooler frozen
    assert [r["step"] for r in history] == [1, 2, 3] and all(tuple(r) == HISTORY_KEYS for r in history)
    assert history[0]["attack_loss_start"] is None  # warm-up step: clean prompt
    assert all(r["attack_loss_end"] is not None and r["loss_retain"] is not None for r in history[1:])


def test_upper_loss_falls(erased):
    bundle, trained, history = erased
    before, after = _esd_eval(bundle, bundle.text), _esd_eval(bundle, trained)
    print(f"ESD loss on fixed draws: {before:.5f} -> {after:.5f}; history {[round(r['loss'], 5) for r in history]}")
    assert after < 0.8 * before


def _attack_setup(bundle, trained, b: int = 2):
    """Models, x0, adversarial tokens (prefix slot), clean original contexts and a random init for `b` rows."""
    models = Models(bundle.unet, trained, [])
    x0 = random_latents(bundle, n=b, seed=1)
    prompts = [TARGETS[i % 2] for i in range(b)]
    candidates = candidate_ids(trained, "all")
    adv = insert_prefix(trained, trained.tokenize(prompts), candidates[:1])
    init = random_prefix(trained, candidates, b, 1, make_generator(3))
    return models, x0, adv, bundle.text.encode(prompts), init


def _objective(models, bundle, x0, adv, delta, ctx0, seed: int = 11, draws: int = 4) -> float:
    """The attack objective averaged over fixed noise/t draws (independent of the attack's own)."""
    gen = make_generator(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            x_t, _, t = noisy_latents(bundle.scheduler, x0, gen)
            total += float(attack_loss(models, x_t, t, adv, delta, ctx0))
    return total / draws


@pytest.mark.parametrize("method", ["pgd", "fast_at"])
def test_inner_attack_lowers_its_objective(erased, method):
    bundle, trained, _ = erased
    models, x0, adv, ctx0, init = _attack_setup(bundle, trained)
    delta, losses = soft_prompt_attack(models, bundle.scheduler, x0, adv, ctx0, init, 15, 1e-2, method,
                                       make_generator(0))
    start, end = _objective(models, bundle, x0, adv, init, ctx0), _objective(models, bundle, x0, adv, delta, ctx0)
    print(f"{method}: attack objective {start:.5f} -> {end:.5f} (same draws); per-step {losses[0]:.5f} .. "
          f"{losses[-1]:.5f}; |delta - init|_max {float((delta - init).abs().max()):.4f}")
    assert len(losses) == 15 and delta.shape == init.shape and not torch.equal(delta, init)
    assert end < start


def test_attack_steps_zero_is_plain_esd(tiny_world_bundle, smoke_params, monkeypatch):
    cfg = _cfg(smoke_params, retain_weight=0.0)
    _, _, attacked = _run(tiny_world_bundle, dataclasses.replace(cfg, warmup_steps=2))

    def no_attack(*args, **kwargs):
        raise AssertionError("attack called with attack_steps=0")

    monkeypatch.setattr(advunlearn, "soft_prompt_attack", no_attack)
    bundle, _, plain = _run(tiny_world_bundle, dataclasses.replace(cfg, attack_steps=0))
    assert all(r["attack_loss_start"] is None and r["loss_retain"] is None for r in plain)
    # Warm-up steps draw exactly as attack_steps=0 does; the attack only changes what follows.
    assert [r["loss"] for r in plain[:2]] == [r["loss"] for r in attacked[:2]]
    assert attacked[2]["attack_loss_start"] is not None and attacked[2]["loss"] != plain[2]["loss"]
    # Step 1 by hand: ESD's loss with the (still untrained) encoder, same draws as the loop.
    gen = make_generator(cfg.seed)
    x_tgt = random_latents(bundle, n=4, seed=1)
    pick = torch.randint(0, 4, (2,), generator=gen)
    x_t, _, t = noisy_latents(bundle.scheduler, x_tgt[pick], gen)
    prompts = [TARGETS[int(i) % 2] for i in pick]
    with torch.no_grad():
        e_u = unet_pred(bundle.unet, x_t, t, bundle.text.encode(["", ""]))
        e_c = unet_pred(bundle.unet, x_t, t, bundle.text.encode(prompts))
        assert plain[0]["loss"] == pytest.approx(float(mse(e_c, 2 * e_u - e_c)), rel=1e-5)


def test_deterministic_for_a_seed(tiny_world_bundle, smoke_params):
    cfg = _cfg(smoke_params, steps=2, attack_method="fast_at")
    _, a, ha = _run(tiny_world_bundle, cfg)
    _, b, hb = _run(tiny_world_bundle, cfg)
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(ha) == drop(hb)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_save_load_round_trip_and_refusal(erased, tiny_sd_bundle, tmp_path):
    from transformers import AutoModel

    bundle, trained, _ = erased
    path = save_text_encoder(trained, tmp_path / "te", {"method": "advunlearn"}, base=bundle)
    loaded = load_text_encoder(bundle, path)
    prompts = TARGETS + RETAIN
    assert torch.equal(loaded.encode(prompts), trained.encode(prompts))
    assert not torch.equal(loaded.encode(prompts), bundle.text.encode(prompts))
    plain = AutoModel.from_pretrained(str(path), local_files_only=True)  # no cdc needed
    tokens = trained.tokenize(prompts)
    with torch.no_grad():
        got = plain(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        want = trained.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    assert torch.equal(got, want)
    other = copy.copy(bundle.text)
    other.model = copy.deepcopy(bundle.text.model)
    with torch.no_grad():
        other.model.encoder.layer[0].output.dense.weight.add_(1e-2)
    with pytest.raises(TextEncoderError, match="other base weights"):
        load_text_encoder(other, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_text_encoder(other, path, allow_other_base=True)
    assert any("other base weights" in str(w.message) for w in caught)
    with pytest.raises(TextEncoderError, match="another base encoder"):
        load_text_encoder(tiny_sd_bundle, path)


def test_sd_text_encoder_path(tiny_sd_bundle, smoke_params, tmp_path):
    base_clip = {n: p.detach().clone() for n, p in tiny_sd_bundle.text.model.named_parameters()}
    bundle, trained, history = _run(tiny_sd_bundle, _cfg(smoke_params, steps=2, lr=1e-3))
    changed = {n for n, p in trained.model.named_parameters() if not torch.equal(p, base_clip[n])}
    assert any(n.endswith("final_layer_norm.weight") for n in changed)
    assert not any("embeddings" in n for n in changed)
    assert history[1]["attack_loss_end"] is not None
    path = save_text_encoder(trained, tmp_path / "clip", {"method": "advunlearn"}, base=bundle)
    assert torch.equal(load_text_encoder(bundle, path).encode(TARGETS), trained.encode(TARGETS))
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(str(path), local_files_only=True)).__name__ == "CLIPTextModel"


def test_text_layers_picks_the_first_layers(tiny_world_bundle):
    def layers(n):
        text_copy, params = trainable_copy(tiny_world_bundle.text, n)
        names = {id(p): name for name, p in text_copy.model.named_parameters()}
        assert all(names[id(p)].startswith("encoder.layer.") for p in params)  # never embeddings or pooler
        return {names[id(p)].split(".")[2] for p in params}

    assert layers(2) == {"0", "1"}
    assert layers(None) == {str(i) for i in range(6)}  # MiniLM: 6 layers, no final norm
    with pytest.raises(ValueError, match="text_layers=7"):
        trainable_copy(tiny_world_bundle.text, 7)


def test_unet_mode_trains_a_lora(tiny_world_bundle, smoke_params):
    base_text = {n: p.detach().clone() for n, p in tiny_world_bundle.text.model.named_parameters()}
    bundle, unet, history = _run(tiny_world_bundle, _cfg(smoke_params, module="unet", lr=1e-3))
    assert unet is bundle.unet and "default" in unet.peft_config
    assert any(p.abs().sum() > 0 for n, p in unet.named_parameters() if ".lora_B." in n)
    assert all(torch.equal(p, base_text[n]) for n, p in bundle.text.model.named_parameters())
    assert history[-1]["attack_loss_end"] is not None


@pytest.mark.slow
def test_attack_trace_falls_on_fixed_draws(erased, smoke_params):
    """The notebook's replay: the prefix learned step by step brings the erased encoder's prediction closer to
    the original's on the same fixed draws, and nothing of either model changes."""
    bundle, text, _ = erased
    before = [p.detach().clone() for p in text.model.parameters()]
    cfg = _cfg(smoke_params, attack_lr=1e-2, attack_k=2)
    model = dataclasses.replace(bundle, text=text)
    trace = attack_trace(model, bundle.text, TARGETS * 2, random_latents(bundle, n=4, seed=1), cfg, steps=12)
    assert len(trace) == 13 and all(map(math.isfinite, trace))
    assert trace[-1] < trace[0]
    assert all(torch.equal(a, b) for a, b in zip(before, text.model.parameters()))
    with pytest.raises(ValueError, match="one prompt per latent"):
        attack_trace(model, bundle.text, TARGETS, random_latents(bundle, n=4, seed=1), cfg, steps=1)
