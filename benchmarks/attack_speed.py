"""What the attack stage's prefix attack costs on one erased model: one prompt at a time, or all in one batch.

    python benchmarks/attack_speed.py --concept church --erased data/erase/church/esd [--repeats 2] \
        [--threads 2] [--params params.yaml] [--json out.json]

Both run UnlearnDiffAtk with params.yaml's `attack.prefix` on the attack stage's prompts, seeds and target
images (`plan_attacks`), against the same erased model, judged by the world's judge:

  one-at-a-time  each prompt the model does not draw is attacked alone (`prefix_attack`), and after each of
                 its rounds one image of that prompt is drawn and judged (the released stop rule)
  batched        `prefix_asr`, as the attack stage runs it: every attacked prompt in one batch per Adam step
                 (each its own weights, optimiser and generator) and one batched draw per round

The two are interleaved over `--repeats` rounds (A B, then B A, ...). The table gives each one's median seconds,
their ratio, and whether they found the same adversarial prompts, rounds and verdicts (a batch changes only the
round-off of the losses).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any

import torch

from cdc.attacks.config import PrefixAttackConfig
from cdc.attacks.prefix import prefix_attack
from cdc.bundle import ModelBundle
from cdc.embeddings import candidate_ids
from cdc.erased import erased_model
from cdc.io import save_json
from cdc.judge import JudgeNet
from cdc.stages.attack import AttackPlan, draw_judged, plan_attacks, prefix_asr, prefix_k
from cdc.stages.params import SampleParams, load_params
from cdc.stages.workspace import family_inputs_or_exit
from cdc.system import hardware
from cdc.world.data import World

WAYS = ("one-at-a-time", "batched")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concept", default="church", help="a target family of the world (params.yaml targets)")
    p.add_argument("--erased", required=True, help="an erase stage output folder (a LoRA or a text encoder)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default="data", help="the pipeline's data folder")
    p.add_argument("--json", default=None, help="write the measurements here")
    return p.parse_args(argv)


def one_at_a_time(model: ModelBundle, judge: JudgeNet, world: World, plan: AttackPlan, cfg: PrefixAttackConfig,
                  sampler: SampleParams) -> list[tuple[str, int, bool]]:
    """Each prompt the model does not draw, attacked alone with a drawn-and-judged stop after every round:
    (adversarial prompt, rounds, drawn) per attacked prompt."""
    pre = draw_judged(model, judge, world, plan.family, plan.prompts, plan.seeds, sampler)
    candidates = candidate_ids(model.text, cfg.vocabulary)
    found = []
    for i in (i for i in range(len(plan.prompts)) if not pre.hits[i]):
        verdicts: dict[str, bool] = {}

        def drawn(adversarial: str, i: int = i, verdicts: dict[str, bool] = verdicts) -> bool:
            judged = draw_judged(model, judge, world, plan.family, [adversarial], [plan.seeds[i]], sampler)
            verdicts[adversarial] = bool(judged.hits[0])
            return verdicts[adversarial]

        result = prefix_attack(model, plan.prompts[i], plan.latents[i], cfg, candidates=candidates, stop=drawn)
        found.append((result.prompt, result.rounds, verdicts[result.prompt]))
    return found


def batched(model: ModelBundle, judge: JudgeNet, world: World, plan: AttackPlan, cfg: PrefixAttackConfig,
            sampler: SampleParams) -> list[tuple[str, int, bool]]:
    """The attack stage's `prefix_asr`: (adversarial prompt, rounds, drawn) per attacked prompt."""
    _, records, _ = prefix_asr(model, judge, world, plan.family, plan.prompts, plan.latents, plan.seeds,
                               plan.base.hits, cfg, sampler, progress=False)
    return [(r["adversarial_prompt"], r["rounds"], r["post"]) for r in records if r["attacked"]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time both ways on one erased model; print the table and return the measurements."""
    args = parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    inputs = family_inputs_or_exit(args.data, args.concept, args.erased)
    world, judge, bundle = inputs.world, inputs.judge, inputs.bundle
    pairs, samples = inputs.pairs, inputs.samples
    plan = plan_attacks(bundle, judge, world, pairs, samples, params.attack, params.sample)
    cfg = dataclasses.replace(params.attack.prefix, k=prefix_k(params.attack, plan.family))
    run = {"one-at-a-time": one_at_a_time, "batched": batched}

    seconds: dict[str, list[float]] = {w: [] for w in WAYS}
    found: dict[str, list[tuple[str, int, bool]]] = {}
    with erased_model(bundle, args.erased) as model:
        for r in range(args.repeats):
            for way in WAYS if r % 2 == 0 else reversed(WAYS):
                start = time.perf_counter()
                found[way] = run[way](model, judge, world, plan, cfg, params.sample)
                seconds[way].append(time.perf_counter() - start)
                print(f"round {r + 1}, {way}: {seconds[way][-1]:.1f} s", file=sys.stderr)

    first, second = (found[w] for w in WAYS)
    result: dict[str, Any] = {
        "concept": args.concept, "model": args.erased, "hardware": hardware(), "repeats": args.repeats,
        "prompts": len(plan.prompts), "attacked": len(first), "prefix": dataclasses.asdict(cfg),
        "same_prompts": [a[0] for a in first] == [b[0] for b in second],
        "same_rounds": [a[1] for a in first] == [b[1] for b in second],
        "same_verdicts": [a[2] for a in first] == [b[2] for b in second],
        "drawn_after_attack": sum(b[2] for b in second),
        "ways": {w: {"seconds_median": statistics.median(seconds[w]), "seconds": seconds[w]} for w in WAYS},
    }
    result["ratio"] = result["ways"][WAYS[0]]["seconds_median"] / result["ways"][WAYS[1]]["seconds_median"]
    print_table(result)
    if args.json:
        save_json(result, args.json)
    return result


def print_table(result: dict[str, Any]) -> None:
    """Seconds per way, the ratio, and whether both found the same."""
    print(f"{result['concept']} ({result['model']}), {result['hardware']}: {result['attacked']} of "
          f"{result['prompts']} prompts attacked, {result['drawn_after_attack']} drawn after the attack")
    for way, m in result["ways"].items():
        print(f"{way:14s} {m['seconds_median']:6.1f} s")
    print(f"one-at-a-time / batched: {result['ratio']:.2f}x; same adversarial prompts {result['same_prompts']}, "
          f"rounds {result['same_rounds']}, verdicts {result['same_verdicts']}")


if __name__ == "__main__":
    main()
