"""Apply the report's targets to erase_sweep.py rows and say which arm each method adopts.

    python benchmarks/sweep_summary.py val_*.json [--json summary.json]

Reads the JSON files `erase_sweep.py --with-base --json` writes (one per concept, each with its base row
on the same evaluation split). An (arm, method) row *meets* its concept when it meets the `report`
targets of the params file (`--params`, params.yaml by default; `cdc.targets`: in-set at most
`in_set_max`, neighbours at least `neighbors_min` x base and retain-all at least `retain_all_min` x base)
other than out-of-set, which is left to the test split. Per method, an arm is adopted over params.yaml's
setting ("") only if it meets more concepts; ties keep params.yaml. Out-of-set rates are printed, not used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdc.stages.params import ReportParams, load_section
from cdc.targets import misses

VALIDATION_RATES = ("in_set", "retain_neighbors", "retain_all")  # out-of-set prompts belong to the test split


def meets(row: dict, base: dict, targets: ReportParams) -> bool:
    """The report's targets (but out-of-set) for one erased row against the base row of the same concept and split."""
    return not misses(row, base, targets, VALIDATION_RATES)


def base_rows(rows: list[dict]) -> dict[str, dict]:
    """The base model's row per concept."""
    return {r["concept"]: r for r in rows if r["method"] == "base"}


def summarise(rows: list[dict], targets: ReportParams) -> dict:
    """Per (method, arm): the concepts it meets; per method: the adopted arm."""
    base = base_rows(rows)
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
    adopted = {}
    for method, arms in met.items():
        # max() keeps the first of equal counts, so params.yaml's "" wins ties when listed first.
        order = sorted(arms, key=lambda a: a != "")
        adopted[method] = max(order, key=lambda a: len(arms[a]))
    return {"concepts": concepts, "meets": met, "adopted": adopted}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="erase_sweep.py --json outputs")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--params", default="params.yaml", help="whose `report` section holds the targets")
    args = parser.parse_args(argv)
    targets = load_section("report", args.params)
    rows = [r for f in args.files for r in json.loads(Path(f).read_text())]
    summary, base = summarise(rows, targets), base_rows(rows)
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
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
