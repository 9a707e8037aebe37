"""What the `base` stage measures, as one call, for the benchmark scripts that compare world models or samplers."""

from __future__ import annotations

from cdc import evaluate as ev
from cdc.bundle import ModelBundle
from cdc.judge import JudgeNet
from cdc.params import BaseParams, SampleParams
from cdc.world.data import World


def base_metrics(
    bundle: ModelBundle, judge: JudgeNet, world: World, cfg: BaseParams, sampler: SampleParams,
    *, fid_images: int | None = None,
) -> dict:
    """Concept and style accuracy, out-of-set rate per family and world-FID (on a seeded subset of
    `fid_images` renders, or on every render as the base stage does)."""
    keys = ev.base_keys(world, cfg.n_other_concepts, cfg.seed)
    in_set = ev.concept_accuracy(bundle, judge, world, keys, cfg.images_per_prompt, sampler, progress=False)
    drawn = ev.draw_out_of_set(bundle, judge, world, cfg.images_per_prompt, sampler, progress=False)
    fid = ev.fid_against_world(bundle, judge, world, sampler, fid_images, cfg.seed, progress=False)
    return {"base_concept_acc": in_set["concept_acc"], "base_style_acc": in_set["style_acc"],
            "base_oos_rate": ev.family_rates(world, drawn), "world_fid": fid}
