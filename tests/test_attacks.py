"""The prefix attack (UnlearnDiffAtk-style) and ASR: embedding path, insertion, loss descent, erasure undone."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import fresh, random_latents, teach

from cdc.attacks.asr import attack_success_rate
from cdc.attacks.config import PrefixAttackConfig
from cdc.attacks.prefix import (
    prefix_attack,
    prefix_loss,
    project_simplex,
    t_grid,
)
from cdc.embeddings import (
    candidate_ids,
    context_from_embeddings,
    insert_prefix,
    token_table,
    token_text,
)
from cdc.methods.ca import train_ca

pytestmark = pytest.mark.usefixtures("one_thread")

CHURCH, HOUSE = "a small church", "a red house"
CFG = PrefixAttackConfig(k=3, iterations=20, timesteps=2, t_schedule="grid", lr=0.01, weight_decay=0.1,
                         rand_init=False, vocabulary="roundtrip", seed=0)


@pytest.fixture(scope="module")
def taught(tiny_world_bundle):
    """The tiny world UNet trained 100 steps to draw latents X for CHURCH and Y for HOUSE: (bundle, X, Y)."""
    x = random_latents(tiny_world_bundle, n=2, seed=1)
    y = random_latents(tiny_world_bundle, n=2, seed=2)
    bundle = teach(tiny_world_bundle, [CHURCH, CHURCH, HOUSE, HOUSE], torch.cat([x, y]), steps=100)
    return bundle, x, y


@pytest.fixture(scope="module")
def candidates(tiny_world_bundle):
    return candidate_ids(tiny_world_bundle.text, "roundtrip")


def _draws(n: int = 8, size: int = 2, shape=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation draws (noise, t), t on the attack's grid; independent of the attack's own draws."""
    gen = torch.Generator().manual_seed(123)
    grid = t_grid(1000, 4)
    return [(torch.randn(shape, generator=gen), torch.full((size,), grid[i % 4])) for i in range(n)]


def _random_prefix_losses(bundle, prompt, x, candidates, draws, unet=None, n=8):
    """Attack loss of n random k-token prefixes from the same candidate set, same draws."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        ids = candidates[torch.randint(0, len(candidates), (CFG.k,), generator=gen)].tolist()
        out.append(prefix_loss(bundle, prompt, ids, x, draws, unet=unet))
    return out


@pytest.mark.parametrize("preset", ["world", "sd"])
def test_embedding_path_reproduces_encode(preset, tiny_world_bundle, tiny_sd_bundle):
    text = (tiny_world_bundle if preset == "world" else tiny_sd_bundle).text
    prompts = [CHURCH, "a red house by the sea, at night"]
    tokens = text.tokenize(prompts)
    embeds = token_table(text)[tokens.input_ids].clone().requires_grad_(True)  # (B, L, D_tok)
    ctx = context_from_embeddings(text, tokens, embeds)
    assert torch.equal(ctx, text.encode(prompts))
    probe = torch.randn(ctx.shape[-1], generator=torch.Generator().manual_seed(0))  # (a plain sum is
    (ctx[:, 1] * probe).sum().backward()  # constant after CLIP's final LayerNorm): grads reach the embeddings
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert not text.model.get_input_embeddings()._forward_hooks  # the hook is gone afterwards
    with pytest.raises(ValueError):
        context_from_embeddings(text, tokens, embeds[:, :-1])


@pytest.mark.parametrize("preset", ["world", "sd"])
def test_insert_prefix_matches_the_tokenizer(preset, tiny_world_bundle, tiny_sd_bundle):
    text = (tiny_world_bundle if preset == "world" else tiny_sd_bundle).text
    cands = candidate_ids(text, "roundtrip")
    prefix = cands[[3, len(cands) // 2, -1]].tolist()
    words = " ".join(token_text(text, i) for i in prefix)
    prompts = [CHURCH, HOUSE + " by the sea"]
    got = insert_prefix(text, text.tokenize(prompts), prefix)
    want = text.tokenize([f"{words} {p}" for p in prompts])
    assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.attention_mask, want.attention_mask)
    plain = text.tokenize(prompts)
    n = int(plain.attention_mask[0].sum())
    assert got.input_ids[0, 1:4].tolist() == prefix
    assert torch.equal(got.input_ids[0, 4 : n + 3], plain.input_ids[0, 1:n])  # prompt + end token, shifted by k
    assert int(got.attention_mask[0].sum()) == n + 3


def test_insert_prefix_truncates_but_keeps_the_end_token(tiny_world_bundle):
    text = tiny_world_bundle.text
    long = " ".join(["church"] * 40)
    plain = text.tokenize([long])
    got = insert_prefix(text, plain, [2000, 2001, 2002])
    assert got.input_ids.shape == plain.input_ids.shape and int(got.attention_mask.sum()) == text.max_length
    assert got.input_ids[0, -1] == text.tokenizer.sep_token_id and got.input_ids[0, 0] == text.tokenizer.cls_token_id
    with pytest.raises(ValueError):
        insert_prefix(text, plain, list(range(text.max_length - 1)))


def test_candidates_exclude_specials_and_continuations(tiny_world_bundle, candidates):
    text = tiny_world_bundle.text
    every = candidate_ids(text, "all")
    assert not set(text.tokenizer.all_special_ids) & set(every.tolist())
    assert set(candidates.tolist()) < set(every.tolist())
    words = text.tokenizer.convert_ids_to_tokens(candidates.tolist())
    assert not [w for w in words if w.startswith(("##", "[unused"))]
    print(f"MiniLM candidates: all {len(every)}, roundtrip {len(candidates)}")


def _bisection(a: torch.Tensor, xi: float = 1e-7) -> torch.Tensor:
    """The released projection (text_grad_.py `bisection`, eps = ub = 1), in float64."""
    lo, hi = float((a - 1).min()), float(a.max())
    while hi - lo > xi:
        mid = (lo + hi) / 2
        if float((a - mid).clamp(0, 1).sum()) > 1:
            lo = mid
        else:
            hi = mid
    return (a - (lo + hi) / 2).clamp(0, 1)


def test_simplex_projection_matches_the_released_bisection():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 50, generator=gen, dtype=torch.float64) * 0.3 + 0.02
    p = project_simplex(w)
    assert torch.allclose(p.sum(-1), torch.ones(3, dtype=torch.float64)) and (p >= 0).all()
    assert torch.allclose(p, torch.stack([_bisection(r) for r in w]), atol=1e-6)
    assert torch.allclose(project_simplex(p), p)  # points of the simplex stay put


@pytest.mark.slow
def test_prefix_attack_lowers_its_loss(taught, candidates):
    """HOUSE attacked towards CHURCH's images: the optimised prefix beats its own random start and 8 random
    prefixes under the same fixed draws (a prefix that only moves the context would not)."""
    bundle, x, _ = taught
    draws = _draws(shape=x.shape)
    res = prefix_attack(bundle, HOUSE, x, CFG, candidates=candidates)
    assert len(res.token_ids) == len(res.tokens) == CFG.k and res.rounds == CFG.timesteps
    assert len(res.losses) == CFG.iterations * CFG.timesteps and np.isfinite(res.losses).all()
    assert res.prompt == " ".join([*res.tokens, HOUSE]) and res.retokenizes
    assert res.losses[res.best_iteration] == min(res.losses)
    final = prefix_loss(bundle, HOUSE, res.token_ids, x, draws)
    start = prefix_loss(bundle, HOUSE, res.initial_token_ids, x, draws)
    rand = _random_prefix_losses(bundle, HOUSE, x, candidates, draws)
    print(f"attack {res.prompt!r}: loss {final:.4f}, random start {start:.4f}, "
          f"random prefixes min {min(rand):.4f} mean {np.mean(rand):.4f}")
    assert final < start and final < min(rand)


def test_prefix_attack_is_deterministic_for_a_seed(tiny_world_bundle, candidates):
    x = random_latents(tiny_world_bundle, n=1, seed=3)
    cfg = dataclasses.replace(CFG, iterations=3, timesteps=1, t_schedule="random", rand_init=True)
    a, b = (prefix_attack(tiny_world_bundle, CHURCH, x, cfg, candidates=candidates) for _ in range(2))
    assert a == b
    c = prefix_attack(tiny_world_bundle, CHURCH, x, dataclasses.replace(cfg, seed=1), candidates=candidates)
    assert c.losses != a.losses
    stopped = prefix_attack(tiny_world_bundle, CHURCH, x, dataclasses.replace(cfg, timesteps=3),
                            candidates=candidates, stop=lambda prompt: prompt.endswith(CHURCH))
    assert stopped.rounds == 1 and len(stopped.losses) == 3


def test_prefix_attack_runs_on_sd(tiny_sd_bundle):
    x = random_latents(tiny_sd_bundle, n=1, seed=0)
    cfg = dataclasses.replace(CFG, k=2, iterations=2, timesteps=1, vocabulary="all")
    res = prefix_attack(tiny_sd_bundle, CHURCH, x, cfg)
    assert len(res.tokens) == 2 and np.isfinite(res.losses).all()
    assert not set(res.token_ids) & set(tiny_sd_bundle.text.tokenizer.all_special_ids)


@pytest.mark.slow
def test_attack_brings_back_an_erased_prompt(taught, candidates, smoke_params):
    """CA erases CHURCH towards HOUSE (LoRA); the attack recovers part of the loss gap on CHURCH's images."""
    bundle, x, y = taught
    erased = fresh(bundle)
    cfg = dataclasses.replace(smoke_params.erase.ca, steps=30, batch_size=2, lr=1e-2, prior_weight=0.0,
                              lora_rank=4, log_every=1000)
    unet, _ = train_ca(erased, [CHURCH], [HOUSE], y, cfg, progress=False)
    draws = _draws(shape=x.shape)
    base = prefix_loss(bundle, CHURCH, None, x, draws)
    before = prefix_loss(erased, CHURCH, None, x, draws, unet=unet)
    res = prefix_attack(erased, CHURCH, x, CFG, unet=unet, candidates=candidates)
    after = prefix_loss(erased, CHURCH, res.token_ids, x, draws, unet=unet)
    rand = _random_prefix_losses(erased, CHURCH, x, candidates, draws, unet=unet)
    recovered = (before - after) / (before - base)
    print(f"base {base:.4f}, erased {before:.4f}, attacked {after:.4f} ({res.prompt!r}): "
          f"{recovered:.0%} of the gap back; random prefixes mean {np.mean(rand):.4f} min {min(rand):.4f}")
    assert before > base + 0.005  # the erasure took the prompt's images away
    assert after < min(rand) and recovered > 0.2


def test_asr_arithmetic_and_intervals():
    pre = [True, False, False, False, True, False]
    post = [False, True, False, True, True, False]  # prompt 0: already a success without the attack
    res = attack_success_rate(pre, post, [True] * 6)
    assert (res.n, res.n_pre, res.n_post_only, res.n_base) == (6, 2, 2, 6)
    assert res.asr == pytest.approx(4 / 6) and res.pre_asr == pytest.approx(2 / 6)
    assert res.asr_lo < res.asr < res.asr_hi and res.pre_asr_lo < res.pre_asr < res.pre_asr_hi
    assert not res.nothing_to_attack
    json.dumps(res.to_dict(), allow_nan=False)
    none = attack_success_rate(np.zeros(3, bool), [False] * 3, [True, False, False])
    assert none.asr == 0.0 and none.asr_lo == 0.0 and 0 < none.asr_hi < 1


def test_asr_nothing_to_attack_is_not_zero():
    res = attack_success_rate([False, False], [True, False], [False, False])
    assert res.nothing_to_attack and res.asr is None and res.pre_asr is None and res.asr_hi is None
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["asr"] is None


def test_asr_and_config_reject_bad_input():
    with pytest.raises(ValueError):
        attack_success_rate([], [], [])
    with pytest.raises(ValueError):
        attack_success_rate([True], [True, False], [True])
    with pytest.raises(TypeError):
        attack_success_rate([1], [True], [True])
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, k=0)
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, t_schedule="sometimes")
