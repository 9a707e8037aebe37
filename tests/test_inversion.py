"""Concept inversion (CCE-style textual inversion against the erased model): placeholder splicing, loss descent,
frozen models, determinism, generation with the learned token, the SD path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import random_latents, teach

from cdc.attacks.config import InversionConfig, fill
from cdc.attacks.inversion import (
    init_id,
    initial_embedding,
    inversion_loss,
    invert_concept,
    placeholder_context,
    placeholder_tokens,
    sample_with_embedding,
)
from cdc.embeddings import token_table
from cdc.sampler import sample

pytestmark = pytest.mark.usefixtures("one_thread")

CHURCH, HOUSE = "church", "house"
TEMPLATES = ("a {}", "an emoji of {}")
CFG = InversionConfig(steps=30, lr=0.02, weight_decay=0.01, batch_size=2, starts=[HOUSE], templates=TEMPLATES,
                      seed=0)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Bit-identical to a `_state` snapshot, and no parameter holds a gradient."""
    after = module.state_dict()
    return (after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
            and all(p.grad is None for p in module.parameters()))


def _draws(shape: tuple[int, ...], n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation draws (noise, t), t in the upper range where the text matters; unrelated to training draws."""
    gen = torch.Generator().manual_seed(123)
    return [(torch.randn(shape, generator=gen), torch.randint(400, 1000, (shape[0],), generator=gen)) for _ in range(n)]


@pytest.fixture(scope="module")
def taught(tiny_world_bundle):
    """The tiny world UNet taught 60 steps to draw latents X for "a church" and Y for "a house": (bundle, X)."""
    x = random_latents(tiny_world_bundle, n=2, seed=1)
    y = random_latents(tiny_world_bundle, n=2, seed=2)
    prompts = [fill("a {}", CHURCH)] * 2 + [fill("a {}", HOUSE)] * 2
    bundle = teach(tiny_world_bundle, prompts, torch.cat([x, y]), steps=60)
    return bundle, x


@pytest.fixture(scope="module")
def inverted(taught):
    """CFG run on X (church latents) from the WRONG word "house": (bundle, X, result, snapshots before the run)."""
    bundle, x = taught
    before = {"unet": _state(bundle.unet), "text": _state(bundle.text.model), "vocab": len(bundle.text.tokenizer)}
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = invert_concept(bundle, x, CFG, HOUSE)
    torch.set_num_threads(n_threads)
    return bundle, x, result, before


@pytest.mark.parametrize("template", ["a {}", "an emoji of {}", "{} on a hill", "{}"])
def test_placeholder_splice_matches_tokenizer_and_encoder(tiny_world_bundle, template) -> None:
    text = tiny_world_bundle.text
    tokens, slots = placeholder_tokens(text, [template], init_id(text, CHURCH))
    ref = text.tokenize([fill(template, CHURCH)])
    assert torch.equal(tokens.input_ids, ref.input_ids) and torch.equal(tokens.attention_mask, ref.attention_mask)
    assert tokens.input_ids[0, int(slots[0])] == init_id(text, CHURCH)
    ctx = placeholder_context(text, [template], initial_embedding(text, CHURCH, torch.Generator()))
    torch.testing.assert_close(ctx, text.encode([fill(template, CHURCH)]), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_loss_falls_below_init_word_and_concept_word(inverted) -> None:
    bundle, x, result, _ = inverted
    draws = _draws(tuple(x.shape))
    init = inversion_loss(bundle, result.init_embedding, x, TEMPLATES, draws)
    learned = inversion_loss(bundle, result.embedding, x, TEMPLATES, draws)
    church = inversion_loss(bundle, initial_embedding(bundle.text, CHURCH, torch.Generator()), x, TEMPLATES, draws)
    assert learned < init and learned < church, (init, church, learned)
    assert len(result.losses) == CFG.steps and all(np.isfinite(result.losses))
    assert result.embedding.shape == (token_table(bundle.text).shape[1],)
    assert torch.equal(result.init_embedding, token_table(bundle.text)[init_id(bundle.text, HOUSE)])


@pytest.mark.slow
def test_only_the_new_embedding_changes(inverted) -> None:
    bundle, _, result, before = inverted
    assert _same_state(bundle.unet, before["unet"]) and _same_state(bundle.text.model, before["text"])
    assert len(bundle.text.tokenizer) == before["vocab"]  # nothing added to the vocabulary
    assert not torch.equal(result.embedding, result.init_embedding)


@pytest.mark.slow
def test_deterministic_for_a_seed(taught) -> None:
    bundle, x = taught
    cfg = dataclasses.replace(CFG, steps=3)
    a, b = invert_concept(bundle, x, cfg, HOUSE), invert_concept(bundle, x, cfg, HOUSE)
    assert torch.equal(a.embedding, b.embedding) and a.losses == b.losses
    c = invert_concept(bundle, x, dataclasses.replace(cfg, seed=1), HOUSE)
    assert not torch.equal(a.embedding, c.embedding)
    r1 = invert_concept(bundle, x, cfg, "random")
    r2 = invert_concept(bundle, x, cfg, "random")
    assert torch.equal(r1.init_embedding, r2.init_embedding) and torch.equal(r1.embedding, r2.embedding)


@pytest.mark.slow
def test_generation_with_the_learned_token(inverted, smoke_params) -> None:
    bundle, _, result, _ = inverted
    cfg = dataclasses.replace(smoke_params.sample, steps=2, precision="fp32", batch_size=2)
    prompts, seeds = ["an emoji of {}", "a {}"], [3, 4]
    words = [fill(p, HOUSE) for p in prompts]
    plain = sample(bundle, words, seeds, cfg, progress=False)
    # contexts in place of prompts: the same images
    np.testing.assert_array_equal(sample(bundle, bundle.text.encode(words), seeds, cfg, progress=False), plain)
    # the init vector in the slot is the init word
    np.testing.assert_array_equal(sample_with_embedding(bundle, prompts, result.init_embedding, seeds, cfg), plain)
    learned = sample_with_embedding(bundle, prompts, result.embedding, seeds, cfg)
    assert learned.shape == plain.shape and learned.dtype == np.uint8
    assert not np.array_equal(learned, plain)


def test_config_and_input_checks(taught) -> None:
    bundle, x = taught
    with pytest.raises(ValueError, match="exactly once"):
        dataclasses.replace(CFG, templates=("a church",))
    with pytest.raises(ValueError, match="exactly once"):
        dataclasses.replace(CFG, templates=("{} and {}",))
    with pytest.raises(ValueError, match="non-empty"):
        dataclasses.replace(CFG, templates=())
    with pytest.raises(ValueError, match=">= 1"):
        dataclasses.replace(CFG, steps=0)
    with pytest.raises(ValueError, match="starts must be"):
        dataclasses.replace(CFG, starts=[])
    with pytest.raises(ValueError, match="repeat"):
        dataclasses.replace(CFG, starts=[HOUSE, "random", HOUSE])
    with pytest.raises(ValueError, match="tokens"):
        invert_concept(bundle, x, CFG, "a red church")
    with pytest.raises(ValueError, match="N, C, h, w"):
        invert_concept(bundle, x[0], CFG, HOUSE)


def test_sd_bundle_with_lora_unet(tiny_sd_bundle, save_random_lora, smoke_params, tmp_path) -> None:
    bundle = tiny_sd_bundle
    lora = save_random_lora(bundle.unet, tmp_path, seed=0).eval().requires_grad_(False)
    text = bundle.text
    tokens, _ = placeholder_tokens(text, ["a photo of {}"], init_id(text, "x"))
    assert torch.equal(tokens.input_ids, text.tokenize(["a photo of x"]).input_ids)
    x = random_latents(bundle, n=2, seed=3)
    before = {"unet": _state(lora), "text": _state(text.model)}
    cfg = InversionConfig(steps=2, lr=0.08, weight_decay=0.01, batch_size=2, starts=["x"],
                          templates=("a photo of {}", "{}"), seed=0)
    result = invert_concept(bundle, x, cfg, "x", unet=lora)
    assert _same_state(lora, before["unet"]) and _same_state(text.model, before["text"])
    assert len(result.losses) == 2 and result.embedding.shape == (token_table(text).shape[1],)
    assert not torch.equal(result.embedding, result.init_embedding)
    scfg = dataclasses.replace(smoke_params.sample, steps=2, precision="fp32", batch_size=2)
    images = sample_with_embedding(bundle, ["a photo of {}"], result.embedding, [0], scfg, unet=lora)
    assert images.shape == (1, bundle.image_size, bundle.image_size, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.losses = []  # type: ignore[misc]
