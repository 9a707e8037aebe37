"""Pretraining, erase pairs, evaluation rows and the report, on tiny models and a small world."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cdc import evaluate as ev
from cdc.anchors import Pairs, erase_pairs, family_of, keep_drawn, load_anchors, save_anchors
from cdc.bundle import make_world_scheduler, make_world_unet
from cdc.config import ReportParams
from cdc.errors import NaNLossError
from cdc.io import save_json
from cdc.lora import remove_lora
from cdc.stages.erase import run_method
from cdc.stages.pretrain import augment_context, caption_pool, lr_at, train_world_model
from cdc.stages.report import erase_table, targets_met
from cdc.world.captions import STYLE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]
# The targets test_report_table's rates are placed around (params.yaml's report section at the time of writing).
TARGETS = ReportParams(in_set_max=0.05, out_of_set_max=0.15, neighbors_min=0.9, retain_all_min=0.95, confidence=0.95)


def tiny_unet(seed=0):
    """The tiny world UNet tiny_training starts from."""
    torch.manual_seed(seed)
    return make_world_unet(16, 12, [32, 32], [False, True], 1, 8, 16)


def tiny_training(params, steps, lr=2e-3, seed=0, latents=None, precision="fp32", attention="auto"):
    unet = tiny_unet(seed)
    latents = torch.randn(4, 12, 16, 16) if latents is None else latents
    contexts = torch.randn(8, 3, 16).half()
    index = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    cfg = dataclasses.replace(
        params.pretrain, steps=steps, batch_size=8, lr=lr, warmup_steps=2, ema_decay=0.9, caption_dropout=0.1,
        token_dropout=0.0, pooled_noise=0.0, seed=seed, precision=precision, attention=attention, log_every=5,
    )
    return train_world_model(unet, make_world_scheduler(), latents, contexts, index, torch.zeros(1, 3, 16), cfg,
                             progress=False)


def test_caption_pool_covers_every_render(world):
    pool = caption_pool(world, 3, seed=0)
    assert len(pool.prompts) == 3 * len(world.images)
    assert set(pool.image_index.tolist()) == set(range(len(world.images)))
    assert pool.prompts[0].endswith(world.styles[world.style[0]] + " style")  # canonical caption first


@pytest.mark.slow
def test_pretraining_loss_falls_and_is_seeded(smoke_params):
    _, history = tiny_training(smoke_params, 40)
    assert history[-1]["loss"] < history[0]["loss"]
    a, _ = tiny_training(smoke_params, 3)
    b, _ = tiny_training(smoke_params, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.slow
def test_bf16_pretraining_keeps_float32_weights_and_stays_near_fp32(smoke_params):
    # Mixed precision: the forward runs in bf16, the weights, optimiser and EMA stay float32.
    fp32, h32 = tiny_training(smoke_params, 40)
    bf16, h16 = tiny_training(smoke_params, 40, precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert h16[-1]["loss"] < h16[0]["loss"]
    assert abs(h16[-1]["loss"] - h32[-1]["loss"]) < 0.1 * h32[0]["loss"]
    assert not all(torch.equal(p, q) for p, q in zip(fp32.parameters(), bf16.parameters()))


def test_training_with_either_attention_kernel_gives_the_same_model(smoke_params):
    # The kernel is an implementation choice: in float32 both train the same model up to rounding. Adam
    # magnifies rounding in weights whose gradient is near zero, so compare what the models compute.
    unfused, h_unfused = tiny_training(smoke_params, 10, attention="unfused")
    fused, h_fused = tiny_training(smoke_params, 10, attention="sdpa")
    initial = tiny_unet()
    assert h_unfused[-1]["loss"] == pytest.approx(h_fused[-1]["loss"], rel=1e-3)
    x, t, ctx = torch.randn(4, 12, 16, 16), torch.tensor([10, 300, 600, 900]), torch.randn(4, 3, 16)
    with torch.no_grad():
        a, b, c = (m(x, t, ctx).sample for m in (unfused, fused, initial))
    assert (a - b).norm() < 0.02 * (a - c).norm()
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in unfused.attn_processors.values())


def test_pretraining_stops_on_nan(smoke_params):
    with pytest.raises(NaNLossError, match="step 0"):
        tiny_training(smoke_params, 3, latents=torch.full((4, 12, 16, 16), float("nan")))


def test_context_augmentation_keeps_the_sentence_token_norm():
    ctx = torch.randn(256, 5, 16)
    ctx[:, -1] = 8.0 * torch.nn.functional.normalize(ctx[:, -1], dim=-1)  # the scaled sentence token
    assert augment_context(ctx, 0.0, 0.0, torch.Generator().manual_seed(0)) is ctx  # off: untouched
    out = augment_context(ctx, 0.5, 0.5, torch.Generator().manual_seed(0))
    again = augment_context(ctx, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded
    torch.testing.assert_close(out[:, -1].norm(dim=-1), torch.full((256,), 8.0))
    cos = torch.nn.functional.cosine_similarity(out[:, -1], ctx[:, -1], dim=-1)
    assert 0.7 < cos.mean() < 0.99  # moved, but stays near the original sentence
    dropped = (out[:, :-1] == 0).all(dim=(1, 2))
    assert 0.35 < dropped.float().mean() < 0.65
    torch.testing.assert_close(out[~dropped, :-1], ctx[~dropped, :-1])  # kept token states are unchanged


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] < lrs[9] == 1.0 and lrs[-1] < 0.2


def test_erase_pairs(world):
    church = erase_pairs(world, "church", [], "names")
    assert church.target_prompts == ["a church, twemoji style", "a church, openmoji style"]
    assert church.anchor_prompts == ["a house, twemoji style", "a house, openmoji style"]
    weapon = erase_pairs(world, "weapon", [], "names")
    assert "a weapon, openmoji style" in weapon.target_prompts
    assert set(weapon.anchor_prompts) == {"a hammer, twemoji style", "a hammer, openmoji style"}
    # "all": every caption phrase of the members, once, in each style, paired with the anchor's name.
    church = erase_pairs(world, "church", [])
    phrases = world.concepts[world.index("church")]["phrases"]
    assert len(church.target_prompts) == 2 * len(phrases) and church.target_prompts[:2] == [
        "a church, twemoji style", "a church, openmoji style"]
    assert set(church.anchor_prompts) == {"a house, twemoji style", "a house, openmoji style"}
    assert all(t.split(",")[1] == a.split(",")[1] for t, a in zip(church.target_prompts, church.anchor_prompts))
    weapon = erase_pairs(world, "weapon", [])
    assert weapon.target_prompts.count("a weapon, openmoji style") == 1
    assert "a dagger, twemoji style" in weapon.target_prompts
    with pytest.raises(ValueError, match="phrases"):
        erase_pairs(world, "church", [], "some")
    style = erase_pairs(world, "openmoji", ["cat", "dog"], "names")
    assert style.target_prompts == ["a cat, openmoji style", "a dog, openmoji style"]
    assert style.anchor_prompts == ["a cat, twemoji style", "a dog, twemoji style"]
    # "all": every phrasing of the style the captions use (not the style-free caption), canonical first.
    style = erase_pairs(world, "openmoji", ["cat", "dog"])
    n = len(STYLE_SUFFIXES["openmoji"]) - 1
    assert len(style.target_prompts) == 2 * n and style.target_prompts[0] == "a cat, openmoji style"
    assert "a dog, line art emoji" in style.target_prompts and "a dog" not in style.target_prompts
    assert style.anchor_prompts == ["a cat, twemoji style"] * n + ["a dog, twemoji style"] * n
    assert family_of(world, "articulated-lorry") == "articulated lorry"
    with pytest.raises(KeyError, match="unknown concept family"):
        family_of(world, "cathedral")
    with pytest.raises(ValueError, match="probe"):
        erase_pairs(world, "openmoji", [])


def test_anchor_equal_to_target_is_rejected(world):
    world.targets["church"]["anchor"], saved = "church", world.targets["church"]["anchor"]
    try:
        with pytest.raises(ValueError, match="anchor"):
            erase_pairs(world, "church", [])
    finally:
        world.targets["church"]["anchor"] = saved


def test_family_hits(world):
    drawn = ev.Drawn(["x"] * 3, np.zeros((3, 2, 2, 3), np.uint8),
                     np.array([world.index("dagger"), world.index("hammer"), world.index("axe")]), np.array([0, 1, 1]))
    assert ev.family_hits(world, "weapon", drawn).tolist() == [True, False, True]
    assert ev.family_hits(world, "openmoji", drawn).tolist() == [False, True, True]


def test_run_method_on_tiny_world(tiny_world_bundle, world, smoke_params):
    pairs = erase_pairs(world, "church", [])
    images = np.full((4, 32, 32, 3), 255, np.uint8)
    samples = {"anchor_images": images, "anchor_index": np.array([0, 1, 0, 1]),
               "target_images": images, "target_index": np.array([0, 1, 0, 1])}
    doco = dataclasses.replace(smoke_params.erase.doco, steps=2, warmup_steps=1, batch_size=2)
    esd = dataclasses.replace(smoke_params.erase.esd, steps=2, batch_size=2)
    for method, cfg in [("doco", doco), ("esd", esd)]:
        erased, history = run_method(tiny_world_bundle, method, pairs, samples, cfg, progress=False)
        assert history and all(np.isfinite(h["seconds"]) for h in history)
        remove_lora(erased.unet)
    with pytest.raises(ValueError, match="unknown method"):
        run_method(tiny_world_bundle, "uce", pairs, samples, doco, progress=False)


def test_keep_drawn_drops_phrases_the_base_model_draws_as_something_else(world):
    pairs = erase_pairs(world, "church", [], "drawn")
    assert pairs == erase_pairs(world, "church", [])  # "drawn" starts from every phrase
    pairs = Pairs("church", ["t0", "t1", "t2"], ["a0", "a1", "a2"])
    index = np.array([0, 0, 1, 1, 2, 2])  # two images per pair
    images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    samples = {"anchor_images": images, "anchor_index": index, "target_images": images + 100, "target_index": index}
    hits = np.array([True, False, False, False, True, True])  # rates 0.5, 0, 1
    kept, out = keep_drawn(pairs, samples, hits, 0.5)
    assert kept == Pairs("church", ["t0", "t2"], ["a0", "a2"])
    assert out["anchor_index"].tolist() == out["target_index"].tolist() == [0, 0, 1, 1]
    assert out["anchor_images"][:, 0, 0, 0].tolist() == [0, 1, 4, 5]  # the kept pairs' own images
    assert out["target_images"][:, 0, 0, 0].tolist() == [100, 101, 104, 105]
    assert keep_drawn(pairs, samples, hits, 0.0)[0] == pairs
    with pytest.raises(ValueError, match="draws none of its prompts"):
        keep_drawn(pairs, samples, np.zeros(6, bool), 0.5)
    with pytest.raises(ValueError, match="verdicts"):
        keep_drawn(pairs, samples, hits[:4], 0.5)


def test_anchors_round_trip_and_missing_anchors(world, tmp_path):
    pairs = erase_pairs(world, "church", [])
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    samples = {"anchor_images": images, "anchor_index": np.array([0, 1])}
    save_anchors(tmp_path / "church", pairs, ["cat"], samples)
    got, probe, loaded = load_anchors(tmp_path / "church")
    assert got == pairs and probe == ["cat"] and loaded.keys() == samples.keys()
    assert all(np.array_equal(loaded[k], v) for k, v in samples.items())
    with pytest.raises(FileNotFoundError, match="dvc repro anchors"):
        load_anchors(tmp_path / "fish")


def test_report_table(tmp_path):
    counts = {"in_set_n": 40, "out_of_set_n": 32, "retain_all_n": 48, "retain_neighbors_n": 40}
    rows = [{"concept": "church", "method": m, "in_set": v, "out_of_set": v, "retain_all": a, "retain_neighbors": r,
             "world_fid": 3.0, **counts}
            for m, v, a, r in [("base", 0.9, 1.0, 1.0), ("doco", 0.0, 0.9375, 0.4), ("esd", 0.0, 1.0, 0.95)]]
    asr = {f"{a}{s}": v for a in ("asr_prefix", "asr_inversion", "asr_ringabell", "asr_context")
           for s, v in (("", 0.5), ("_lo", 0.2), ("_hi", 0.8), ("_n", 10), ("_nothing", False))}
    for row in rows:  # one file per row, as the evaluate and attack stages write them
        save_json(row, tmp_path / "eval" / "church" / f"{row['method']}.json")
        save_json({"concept": "church", "method": row["method"], **asr, "pre_asr": 0.1, "pre_asr_lo": 0.0,
                   "pre_asr_hi": 0.4}, tmp_path / "attack" / "church" / f"{row['method']}.json")
    save_json({"seconds": 12.0, "peak_mem_mb": 900}, tmp_path / "erase" / "church" / "doco.json")
    attacks = tmp_path / "attack"
    table = erase_table(["church"], ["doco", "esd"], tmp_path / "eval", tmp_path / "erase", TARGETS, attacks)
    table = table.set_index("method")
    assert table.loc["doco", "retain_neighbors_vs_base"] == pytest.approx(0.4)
    assert table.loc["doco", "seconds"] == 12.0
    assert table.loc["doco", "retain_neighbors_lo"] < 0.4 < table.loc["doco", "retain_neighbors_hi"]
    # 45/48 misses 0.95 x base, but not clearly; 16/40 neighbours misses 0.9 x base clearly.
    assert table.loc["doco", "missed"] == "retain_neighbors retain_all"
    assert table.loc["doco", "missed_clearly"] == "retain_neighbors"
    assert table.loc["esd", "missed"] == "" and table.loc["base", "missed"] == ""
    met = targets_met(table.reset_index())
    assert met.loc["esd", "met"] == "1/1" and met.loc["doco", "meets"] == "" and met.loc["doco", "met"] == "0/1"
    with pytest.raises(FileNotFoundError, match="dvc repro evaluate@church-ca"):
        erase_table(["church"], ["doco", "ca"], tmp_path / "eval", tmp_path / "erase", TARGETS, attacks)
    with pytest.raises(FileNotFoundError, match="dvc repro evaluate_base@fish"):
        erase_table(["fish"], ["doco"], tmp_path / "eval", tmp_path / "erase", TARGETS, attacks)
    for r in rows:
        save_json({k: v for k, v in r.items() if k != "in_set_n"}, tmp_path / "old" / "church" / f"{r['method']}.json")
    with pytest.raises(ValueError, match="image counts"):
        erase_table(["church"], ["doco"], tmp_path / "old", tmp_path / "erase", TARGETS, attacks)


def test_prompt_rates(world):
    dagger, hammer = world.index("dagger"), world.index("hammer")
    drawn = ev.Drawn(["b", "b", "a", "a"], np.zeros((4, 2, 2, 3), np.uint8),
                     np.array([dagger, hammer, hammer, hammer]), np.zeros(4, np.int64))
    assert ev.prompt_rates(world, "weapon", drawn) == {"b": 0.5, "a": 0.0}


def test_misses_names_what_was_drawn_instead(world):
    house, hut, church = world.index("house"), world.index("hut"), world.index("church")
    expected = np.array([house, house, house, hut, hut])
    concept = np.array([house, church, church, hut, hut])
    drawn = ev.Drawn(["x"] * 5, np.zeros((5, 2, 2, 3), np.uint8), concept, np.zeros(5, np.int64))
    ok = concept == expected
    assert ev.misses(world, drawn, expected, ok) == {"house": {"acc": 1 / 3, "instead": "church"}}
    # Right concept, wrong style (the style family's rule): the concept itself is what was seen.
    ok[3] = False
    assert ev.misses(world, drawn, expected, ok)["hut"] == {"acc": 0.5, "instead": "hut"}
    assert ev.misses(world, drawn, expected, np.ones(5, bool)) == {}
