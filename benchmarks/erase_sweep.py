"""Erase one concept with several settings per method and evaluate each as the pipeline does; pick a setting.

    python benchmarks/erase_sweep.py --concept church --method doco --arm "" --arm "surgery=pcgrad" [--json out.json]
    python benchmarks/erase_sweep.py --concept parachute --method doco --method esd --method ca --arm "" \
        --arm "doco.lam=2 ca.prior_weight=2 esd.negative_guidance=0.5" \
        --sample "seed=1000" --evaluate "seed=778" --with-base --json val_parachute.json
    python benchmarks/erase_sweep.py --summary val_*.json [--json summary.json]

Each --arm overrides params.yaml's `erase.<method>` sections: `key=value` for every method given,
`method.key=value` for one ("" is params.yaml as it is, so it reproduces the committed row of
data/eval/<concept>.json). Each (arm, method) run trains on the `anchors` stage's samples and is evaluated with
`cdc.evaluate.erasure_row` (the evaluate stage's prompts, seeds and judge); `--attack` adds the attack stage's
ASR columns but Ring-A-Bell's, `--with-base` the base model's row. `--sample "seed=1000" --evaluate "seed=778"
--attack-set "seed=900"` evaluate and attack on a validation split (other image seeds, another sample of retained
concepts, other attacked prompts and seeds), so a setting is not tuned on the test split the paper reports.

`--summary` runs nothing: it applies the adoption rule to `--with-base --json` files, one per concept. An erased
row meets its concept when it meets the params file's `report` targets but out-of-set (left to the test split);
per method an arm replaces params.yaml's setting ("") only if it meets more concepts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdc.config import ReportParams
from cdc.methods import known_methods
from cdc.stages.ablate import run_arm, scorer
from cdc.stages.attack import plan_attacks
from cdc.stages.erase import retain_set
from cdc.stages.params import with_overrides
from cdc.stages.schema import load_params, load_section
from cdc.stages.sections.erase import EraseParams
from cdc.stages.workspace import family_inputs_or_exit
from cdc.system import hardware
from cdc.targets import misses
from cdc.world.data import other_concepts

VALIDATION_RATES = ("in_set", "retain_neighbors", "retain_all")  # out-of-set prompts belong to the test split


def arm_configs(erase: EraseParams, arm: str, methods: list[str]) -> dict:
    """Each method's config with the arm's overrides: 'key=v' for all methods, 'method.key=v' for one."""
    own: dict[str, list[str]] = {m: [] for m in methods}
    for item in arm.split():
        key, _, value = item.partition("=")
        method, dot, key = key.rpartition(".")
        if not dot:
            for m in methods:
                own[m].append(item)
        elif method in own:
            own[method].append(f"{key}={value}")
        else:
            raise ValueError(f"arm item {item!r} names {method!r}, which is not among --method {methods}")
    return {m: with_overrides(getattr(erase, m), " ".join(own[m]), f"erase.{m}") for m in methods}


def meets(row: dict, base: dict, targets: ReportParams) -> bool:
    """Whether an erased row meets the report's targets but out-of-set, against its concept's base row."""
    return not misses(row, base, targets, VALIDATION_RATES)


def summarise(rows: list[dict], targets: ReportParams) -> dict:
    """Per method and arm the concepts it meets, and per method the adopted arm."""
    base = {r["concept"]: r for r in rows if r["method"] == "base"}
    concepts = sorted({r["concept"] for r in rows if r["method"] != "base"})
    missing = [c for c in concepts if c not in base]
    if missing:
        raise ValueError(f"no base row for {missing}: run erase_sweep.py with --with-base")
    met: dict[str, dict[str, list[str]]] = {}  # method -> arm -> concepts met, arms in the order run
    for r in rows:
        if r["method"] != "base":
            concepts_met = met.setdefault(r["method"], {}).setdefault(r["arm"], [])
            if meets(r, base[r["concept"]], targets):
                concepts_met.append(r["concept"])
    # max() keeps the first of equal counts and params.yaml's "" is sorted first, so ties keep params.yaml.
    adopted = {m: max(sorted(arms, key=lambda a: a != ""), key=lambda a: len(arms[a])) for m, arms in met.items()}
    return {"concepts": concepts, "meets": met, "adopted": adopted}


def print_summary(rows: list[dict], summary: dict, targets: ReportParams) -> None:
    """Every row relative to its base, then each method's count of concepts met and the arm it adopts."""
    base = {r["concept"]: r for r in rows if r["method"] == "base"}
    print(f"{'concept':18s} {'method':6s} {'in':>5s} {'oos':>5s} {'nbr/base':>8s} {'all/base':>8s} {'FID':>5s}  arm")
    for r in rows:
        b = base[r["concept"]]
        flag = "" if r["method"] == "base" else ("meets" if meets(r, b, targets) else "-")
        print(f"{r['concept']:18s} {r['method']:6s} {r['in_set']:5.2f} {r['out_of_set']:5.2f} "
              f"{r['retain_neighbors'] / b['retain_neighbors']:8.2f} {r['retain_all'] / b['retain_all']:8.2f} "
              f"{r['world_fid']:5.1f}  {r['arm'] or 'params.yaml'} {flag}")
    for method, arms in summary["meets"].items():
        counts = ", ".join(f"{a or 'params.yaml'}: {len(c)}/{len(summary['concepts'])}" for a, c in arms.items())
        print(f"{method}: {counts} -> adopts {summary['adopted'][method] or 'params.yaml'}")


def write_json(data: list | dict, path: str | None) -> None:
    """Write `data` to `path` when one is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> list[dict] | dict:
    """Run the sweep and return its rows, or with --summary return the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="church")
    parser.add_argument("--method", action="append", choices=known_methods(), help="repeatable; default: doco")
    parser.add_argument("--arm", action="append", help='overrides, e.g. "steps=300 doco.surgery=pcgrad"')
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data", help="folder with world/, models/, anchors/")
    parser.add_argument("--evaluate", default="", help='overrides of the evaluate section, e.g. "seed=778"')
    parser.add_argument("--sample", default="", help='sample overrides for the evaluation, e.g. "seed=1000"')
    parser.add_argument("--with-base", action="store_true", help="also evaluate the base model (row method=base)")
    parser.add_argument("--attack", action="store_true", help="also attack each model as the attack stage does")
    parser.add_argument("--attack-set", default="", help='attack overrides for a validation split, e.g. "seed=900"')
    parser.add_argument("--summary", nargs="+", metavar="FILE", help="apply the adoption rule to these --json files")
    parser.add_argument("--json", help="also write the rows (or the --summary) here")
    args = parser.parse_args(argv)
    if args.summary:
        targets = load_section("report", args.params)
        rows = [r for f in args.summary for r in json.loads(Path(f).read_text())]
        summary = summarise(rows, targets)
        print_summary(rows, summary, targets)
        write_json(summary, args.json)
        return summary
    methods, arms = args.method or ["doco"], args.arm or [""]
    params = load_params(args.params)
    configs = [arm_configs(params.erase, arm, methods) for arm in arms]  # every arm checked before any runs
    cfg = with_overrides(params.evaluate, args.evaluate, "evaluate")
    sampler = with_overrides(params.sample, args.sample, "sample")
    inputs = family_inputs_or_exit(args.data, args.concept)
    world, judge, bundle = inputs.world, inputs.judge, inputs.bundle
    pairs, probe, samples = inputs.pairs, inputs.probe, inputs.samples
    retain = other_concepts(world, cfg.n_retain, cfg.seed)
    print(f"hardware: {hardware()}", flush=True)
    rows = []
    # which evaluation split the row is on
    split = {"sample": args.sample, "evaluate": args.evaluate, "attack": args.attack_set}
    # AdvUnlearn's regulariser never sees the retained concepts
    adv_retain = retain_set(world, pairs.family, retain)
    attack = with_overrides(params.attack, args.attack_set, "attack")  # its seed picks the prompts and fresh seeds
    plan = plan_attacks(bundle, judge, world, pairs, samples, attack, sampler) if args.attack else None
    # Every row, base or erased, is judged on the same prompts, seeds and retained concepts.
    score = scorer(judge, world, pairs, probe, retain, cfg, sampler, attack if plan else None, plan)
    if args.with_base:
        rows.append({"concept": args.concept, "method": "base", "arm": "", **split, **score(bundle)})
        print(json.dumps(rows[-1]), flush=True)
    for arm, by_method in zip(arms, configs):
        for method, method_cfg in by_method.items():
            row, _ = run_arm(bundle, method, method_cfg, pairs, samples, score, retain=adv_retain, progress=False)
            rows.append({"concept": args.concept, "method": method, "arm": arm, **split, **row})
            print(json.dumps(rows[-1]), flush=True)
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
