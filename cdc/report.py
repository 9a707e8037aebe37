"""Gather evaluated rows into the project's tables (CSV for DVC, LaTeX for the paper)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cdc.io import load_json
from cdc.params import ReportParams
from cdc.targets import RATES, clear_misses, interval, misses

COLUMNS = ["concept", "method", "in_set", "out_of_set", "retain_all", "retain_neighbors", "world_fid",
           "seconds", "peak_mem_mb", *(f"{r}_n" for r in RATES)]


def erase_table(concepts: list[str], methods: list[str], eval_dir: str | Path, erase_dir: str | Path,
                targets: ReportParams | None = None) -> pd.DataFrame:
    """One row per (concept, method) plus a `base` row per concept; utility also relative to base.

    Each rate gets a Wilson interval (`<rate>_lo`, `<rate>_hi`) over its judged images, and each erased row
    the targets it misses (`missed`) and those of them its interval excludes (`missed_clearly`).
    """
    targets = targets or ReportParams()
    rows = []
    for concept in concepts:
        path = Path(eval_dir) / f"{concept}.json"
        if not path.exists():
            raise FileNotFoundError(f"no evaluation for {concept!r} at {path}: run `dvc repro evaluate`")
        for row in load_json(path):
            run = Path(erase_dir) / concept / f"{row['method']}.json"
            rows.append(row | (load_json(run) if run.exists() else {}))
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    missing = {(c, m) for c in concepts for m in ["base", *methods]} - set(zip(table.concept, table.method))
    if missing:
        raise ValueError(f"evaluations are missing rows for {sorted(missing)}")
    base = table[table.method == "base"].set_index("concept")
    for col in ("retain_all", "retain_neighbors"):
        table[f"{col}_vs_base"] = table[col] / table.concept.map(base[col])
    uncounted = table[table[[f"{r}_n" for r in RATES]].isna().any(axis=1)]
    if len(uncounted):
        raise ValueError(f"evaluations without image counts for {sorted(set(uncounted.concept))}: "
                         "they predate the counts, run `dvc repro evaluate`")
    for col in RATES:
        bounds = [interval(v, int(n), targets.confidence) for v, n in zip(table[col], table[f"{col}_n"])]
        table[f"{col}_lo"], table[f"{col}_hi"] = zip(*bounds)
    erased = table.method != "base"
    for col, rule in (("missed", misses), ("missed_clearly", clear_misses)):
        table[col] = ""
        table.loc[erased, col] = [" ".join(rule(r, base.loc[r.concept], targets))
                                  for _, r in table[erased].iterrows()]
    return table


def targets_met(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: how many families meet every target, which, and which miss only within sampling noise."""
    rows = {}
    for method, g in table[table.method != "base"].groupby("method", sort=False):
        met, noisy = g.missed == "", (g.missed != "") & (g.missed_clearly == "")
        rows[method] = {"met": f"{met.sum()}/{len(g)}", "meets": ", ".join(g.concept[met]),
                        "missed_within_noise": ", ".join(g.concept[noisy])}
    return pd.DataFrame.from_dict(rows, orient="index")


SHORT = {"in_set": "in", "out_of_set": "oos", "retain_neighbors": "nbr", "retain_all": "all"}


def latex_table(table: pd.DataFrame) -> str:
    """The erase table as a LaTeX tabular (booktabs), one block per concept; the last column names the
    targets a row misses, starred where the miss lies within the rate's interval (sampling noise)."""
    head = ("\\begin{tabular}{llrrrrrrl}\n\\toprule\nconcept & method & in-set $\\downarrow$ & out-of-set $\\downarrow$"
            " & retain nbr. $\\uparrow$ & retain all $\\uparrow$ & FID $\\downarrow$ & s & missed \\\\\n\\midrule\n")
    lines = []
    for concept, block in table.groupby("concept", sort=False):
        for _, r in block.iterrows():
            secs = "" if pd.isna(r.seconds) else f"{r.seconds:.0f}"
            clear = r.missed_clearly.split()
            missed = ", ".join(SHORT[m] + ("" if m in clear else "$^\\ast$") for m in r.missed.split())
            lines.append(f"{concept} & {r.method} & {r.in_set:.2f} & {r.out_of_set:.2f} & {r.retain_neighbors:.2f}"
                         f" & {r.retain_all:.2f} & {r.world_fid:.1f} & {secs} & {missed} \\\\")
        lines.append("\\midrule")
    return head + "\n".join(lines[:-1]) + "\n\\bottomrule\n\\end{tabular}\n"


def world_table(metrics: dict) -> str:
    """The world's numbers (judge, base model, pretraining) as a two-column LaTeX tabular."""
    pair = "{:.3f} / {:.3f}".format
    rows = [("concepts", f"{metrics['n_concepts']}"),
            ("judge concept / style accuracy", pair(metrics["judge_concept_acc"], metrics["judge_style_acc"])),
            ("base concept / style accuracy", pair(metrics["base_concept_acc"], metrics["base_style_acc"])),
            ("world-FID of the base model", f"{metrics['world_fid']:.2f}"),
            ("pretraining (min)", f"{metrics['pretrain_seconds'] / 60:.0f}")]
    rows += [(f"out-of-set rate, {f}", f"{v:.2f}") for f, v in metrics["base_oos_rate"].items()]
    body = "\n".join(f"{k} & {v} \\\\" for k, v in rows)
    return "\\begin{tabular}{lr}\n\\toprule\n" + body + "\n\\bottomrule\n\\end{tabular}\n"
