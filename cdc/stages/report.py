"""Gather evaluated rows into the project's tables (CSV for DVC and the paper, markdown for the README)."""

from __future__ import annotations

from collections.abc import Iterator
from math import nan
from pathlib import Path

import numpy as np
import pandas as pd

from cdc.config import ReportParams
from cdc.grid import make_grid
from cdc.io import load_json, save_text
from cdc.stages.sections.ablate import AblateParams
from cdc.stages.sections.multi import MultiParams
from cdc.stages.sections.relearn import RelearnParams
from cdc.stages.sections.tradeoff import TradeoffParams
from cdc.stages.sections.transfer import TransferParams
from cdc.targets import RATES, clear_misses, interval, misses, returned_at

# seconds, peak_mem_mb and hardware: the erase stage's record of the run (`<erase_dir>/<concept>/<method>.json`)
COLUMNS = ["concept", "method", "in_set", "out_of_set", "retain_all", "retain_neighbors", "world_fid",
           "seconds", "peak_mem_mb", "hardware", *(f"{r}_n" for r in RATES)]
ATTACKS = {"asr_prefix": "prefix attack", "asr_inversion": "concept inversion", "asr_ringabell": "Ring-A-Bell",
           "asr_context": "context (upper bound)"}
# The attack stage's columns (cdc.stages.attack.flat_row): each ASR with its interval and counts, and the pre-attack
# rate.
ATTACK_COLUMNS = [f"{a}{s}" for a in ATTACKS for s in ("", "_lo", "_hi", "_n", "_nothing")] + [
    "pre_asr", "pre_asr_lo", "pre_asr_hi"]


def erase_table(concepts: list[str], methods: list[str], eval_dir: str | Path, erase_dir: str | Path,
                targets: ReportParams, attack_dir: str | Path) -> pd.DataFrame:
    """One row per (concept, method) plus a `base` row per concept; utility also relative to base; the attack
    stage's success rates beside them. Each row is the evaluate and attack stages' `<dir>/<concept>/<method>.json`.

    Each rate gets a Wilson interval (`<rate>_lo`, `<rate>_hi`) over its judged images, and each erased row
    the targets it misses (`missed`) and those of them its interval excludes (`missed_clearly`).
    """
    rows = []
    for concept in concepts:
        for method in ["base", *methods]:
            row = {}
            for folder, stage in ((eval_dir, "evaluate"), (attack_dir, "attack")):
                path = Path(folder) / concept / f"{method}.json"
                if not path.exists():
                    name = f"{stage}_base@{concept}" if method == "base" else f"{stage}@{concept}-{method}"
                    raise FileNotFoundError(f"no {stage} row for {concept} {method} at {path}: run `dvc repro {name}`")
                found = load_json(path)
                row |= found if stage == "evaluate" else {k: found[k] for k in ATTACK_COLUMNS}
            run = Path(erase_dir) / concept / f"{method}.json"
            rows.append(row | (load_json(run) if run.exists() else {}))
    table = pd.DataFrame(rows).reindex(columns=COLUMNS + ATTACK_COLUMNS)
    uncounted = table[table[[f"{r}_n" for r in RATES]].isna().any(axis=1)]
    if len(uncounted):
        raise ValueError(f"evaluations without image counts for {sorted(set(uncounted.concept))}: "
                         "they predate the counts, run `dvc repro evaluate`")
    return annotate(table, table[table.method == "base"].set_index("concept"), targets)


def context_budget_curves(concepts: list[str], methods: list[str], attack_dir: str | Path) -> pd.DataFrame:
    """The context attack's ASR against its budget (update steps), per family and method (base first), from the
    attack rows' `context_fit.asr_by_steps`; families with nothing to attack have no points."""
    rows = []
    for concept in concepts:
        for method in ["base", *methods]:
            found = load_json(Path(attack_dir) / concept / f"{method}.json")
            by_steps = found.get("context_fit", {}).get("asr_by_steps", {})
            for steps, asr in sorted(by_steps.items(), key=lambda kv: int(kv[0])):  # JSON keys: "100" < "25"
                if asr is not None:
                    rows.append({"concept": concept, "method": method, "steps": int(steps), "asr": float(asr)})
    return pd.DataFrame(rows, columns=["concept", "method", "steps", "asr"])


def family_grid(eval_dir: str | Path, concept: str, methods: list[str]) -> np.ndarray:
    """The family's before/after grid: the evaluate stage's strip of each row (base first), one row of images each
    (in-set prompts left, out-of-set right), labelled with the judge's verdicts; uint8 (H, W, 3)."""
    strips = [np.load(Path(eval_dir) / concept / f"{m}.npz") for m in ["base", *methods]]
    cells = np.concatenate([s["images"] for s in strips])
    labels = [str(label) for s in strips for label in s["labels"]]
    return make_grid(cells, ncols=len(strips[0]["images"]), labels=labels, scale=3)


def annotate(table: pd.DataFrame, base: pd.DataFrame, targets: ReportParams) -> pd.DataFrame:
    """`table` with utility relative to `base` (its concept's base row), a Wilson interval on every rate, and
    per erased row the targets it misses (`missed`) and those its interval excludes (`missed_clearly`)."""
    table = table.copy()
    for col in ("retain_all", "retain_neighbors"):
        table[f"{col}_vs_base"] = table[col] / table.concept.map(base[col])
    for col in RATES:
        bounds = [interval(v, int(n), targets.confidence) for v, n in zip(table[col], table[f"{col}_n"])]
        table[f"{col}_lo"], table[f"{col}_hi"] = zip(*bounds)
    erased = table.method != "base"
    for col, rule in (("missed", misses), ("missed_clearly", clear_misses)):
        table[col] = ""
        table.loc[erased, col] = [" ".join(rule(r, base.loc[r.concept], targets))
                                  for _, r in table[erased].iterrows()]
    return table


def ablate_table(table: pd.DataFrame, ablate: AblateParams, ablate_dir: str | Path,
                 targets: ReportParams) -> pd.DataFrame:
    """The ablate stage's arms (`<ablate_dir>/<concept>/<arm>.json`), each after its method's own row of the
    erase table (`erase_table`; arm "", the reference), with the same columns, intervals and misses."""
    rows = []
    for concept in ablate.concepts:
        for method in dict.fromkeys(a.method for a in ablate.arms.values()):
            ref = table[(table.concept == concept) & (table.method == method)]
            if ref.empty:
                raise ValueError(f"the erase table has no {method} row for {concept}: the ablation needs its reference")
            rows.append(ref.iloc[0][COLUMNS + ATTACK_COLUMNS].to_dict() | {"arm": "", "label": "as in params.yaml"})
            for name, arm in ablate.arms.items():
                if arm.method != method:
                    continue
                path = Path(ablate_dir) / concept / f"{name}.json"
                if not path.exists():
                    raise FileNotFoundError(f"no result for ablation arm {name!r} on {concept!r} at {path}: "
                                            f"run `dvc repro ablate@{concept}-{name}`")
                rows.append(load_json(path))
    arms = pd.DataFrame(rows).reindex(columns=["arm", "label", *COLUMNS, *ATTACK_COLUMNS])
    return annotate(arms, table[table.method == "base"].set_index("concept"), targets)


def transfer_table(table: pd.DataFrame, transfer: TransferParams, transfer_path: str | Path,
                   targets: ReportParams) -> pd.DataFrame:
    """Plug-and-play: per family and method (base first), the erase table's row on the first UNet (`unet`
    "first") and the transfer stage's row with the same text encoder on the second UNet ("second"); each
    UNet's rows are measured against its own base row."""
    path = Path(transfer_path)
    if not path.exists():
        raise FileNotFoundError(f"no transfer results at {path}: run `dvc repro transfer`")
    second = pd.DataFrame(load_json(path)).reindex(columns=COLUMNS + ATTACK_COLUMNS)
    blocks = []
    for unet, rows in (("first", table[COLUMNS + ATTACK_COLUMNS]), ("second", second)):
        rows = rows[rows.concept.isin(transfer.concepts) & rows.method.isin(["base", *transfer.methods])]
        missing = {(c, m) for c in transfer.concepts for m in ["base", *transfer.methods]} - set(
            zip(rows.concept, rows.method))
        if missing:
            raise ValueError(f"the {unet} UNet's rows miss {sorted(missing)}: run `dvc repro transfer report`")
        blocks.append(annotate(rows, rows[rows.method == "base"].set_index("concept"), targets).assign(unet=unet))
    both = pd.concat(blocks, ignore_index=True)
    rank = {"_family": both.concept.map(transfer.concepts.index),
            "_method": both.method.map(["base", *transfer.methods].index)}
    return both.assign(**rank).sort_values(["_family", "_method", "unet"]).drop(columns=list(rank)).reset_index(
        drop=True)


def transfer_markdown(table: pd.DataFrame) -> str:
    """The transfer table (from `transfer_table`): each family and method on the first UNet, then the second."""
    note = ("\nFirst: the erase table's rows. Second: the same text encoders, trained against the first UNet only, in"
            " front of a second world UNet (10_transfer: params.yaml `transfer.pretrain`), judged and attacked the"
            " same way; its base row is its own. Seconds are the erase's, so the second UNet's rows have none.\n")
    return _keyed_markdown(table, "unet", "UNet", note)


def _tradeoff_runs(tradeoff: TradeoffParams, tradeoff_dir: str | Path) -> dict[str, dict]:
    """The tradeoff stage's file per family, checked to hold every method of params.yaml `tradeoff`."""
    runs = {}
    for concept in tradeoff.concepts:
        path = Path(tradeoff_dir) / f"{concept}.json"
        if not path.exists():
            raise FileNotFoundError(f"no trade-off sweep for {concept!r} at {path}: run `dvc repro tradeoff@{concept}`")
        runs[concept] = load_json(path)
        if missing := [m for m in tradeoff.methods if m not in runs[concept]["methods"]]:
            raise ValueError(f"{path} has no sweep of {missing}: run `dvc repro -f tradeoff@{concept}`")
    return runs


def tradeoff_points(tradeoff: TradeoffParams, tradeoff_dir: str | Path) -> pd.DataFrame:
    """Every snapshot of the tradeoff stage (validation split), one row per (concept, method, scale), after each
    family's base row (method "base", scale 0); retention also relative to that base row."""
    cols = ["concept", "method", "scale", "steps", "seconds", "in_set", "out_of_set", "retain_neighbors", "retain_all"]
    rows = []
    for concept, run in _tradeoff_runs(tradeoff, tradeoff_dir).items():
        rows.append(run["base_validation"] | {"concept": concept, "method": "base", "scale": 0.0, "steps": 0})
        rows += [p | {"concept": concept, "method": m} for m in tradeoff.methods for p in run["methods"][m]["points"]]
    points = pd.DataFrame(rows).reindex(columns=cols)
    base = points[points.method == "base"].set_index("concept")
    for col in ("retain_all", "retain_neighbors"):
        points[f"{col}_vs_base"] = points[col] / points.concept.map(base[col])
    return points


def matched_table(table: pd.DataFrame, tradeoff: TradeoffParams, tradeoff_dir: str | Path,
                  targets: ReportParams) -> pd.DataFrame:
    """Per family and method, the matched-erasure point (chosen on the validation split) as scored on the
    evaluation split, with the erase table's columns, intervals and misses against the erase table's base row;
    `scale` is its training length (x params.yaml's), and a method none of whose lengths met the erasure targets
    has a row of its own with `scale` empty ("never reaches it")."""
    rows = []
    for concept, run in _tradeoff_runs(tradeoff, tradeoff_dir).items():
        for method in tradeoff.methods:
            found = run["methods"][method]
            rows.append((found["matched"] or {}) | {"concept": concept, "method": method,
                                                    "scale": found["matched_scale"]})
    out = pd.DataFrame(rows).reindex(columns=["scale", *COLUMNS, *ATTACK_COLUMNS])  # not attacked: no ASR
    base = table[table.method == "base"].set_index("concept")
    if missing := sorted(set(out.concept) - set(base.index)):
        raise ValueError(f"the erase table has no base row for {missing}: the matched rows are measured against it")
    reached = out[out.scale.notna()]
    never = out[out.scale.isna()].assign(missed="never reaches the erasure targets", missed_clearly="")
    return pd.concat([annotate(reached, base, targets), never]).sort_index()


def matched_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Per family: the method that keeps most at matched erasure (neighbours + retain on the evaluation split),
    the runner-up, and whether their neighbours intervals overlap (then the data cannot tell them apart)."""
    rows = []
    for concept, g in matched.groupby("concept", sort=False):
        # Most kept first; on a tie, the order of params.yaml `tradeoff.methods` (a stable sort).
        g = g[g.scale.notna()].assign(kept=lambda d: d.retain_neighbors + d.retain_all)
        g = g.sort_values("kept", ascending=False, kind="stable")
        never = ", ".join(sorted(set(matched[matched.concept == concept].method) - set(g.method))) or "-"
        if g.empty:
            rows.append({"family": concept, "best": "none reaches it", "runner-up": "", "intervals overlap": "",
                         "never reaches it": never})
            continue
        best = g.iloc[0]
        second = g.iloc[1] if len(g) > 1 else None
        overlap = "" if second is None else (
            "yes" if best.retain_neighbors_lo <= second.retain_neighbors_hi else "no")
        rows.append({"family": concept, "best": best.method, "runner-up": "" if second is None else second.method,
                     "intervals overlap": overlap, "never reaches it": never})
    return pd.DataFrame(rows)


def matched_markdown(matched: pd.DataFrame, summary: pd.DataFrame, targets: ReportParams) -> str:
    """The matched-erasure table (from `matched_table`) and its per-family verdict (`matched_summary`)."""
    head = ["family", "method", "length", *[h for h in MD_HEAD if not h.startswith("ASR")]]

    def cells(r: pd.Series) -> list[str]:
        if pd.isna(r.scale):
            return [r.concept, r.method, "never reaches it", *[""] * (len(head) - 3)]
        row = _cells(r)
        return [r.concept, r.method, f"{r.scale:g}x", *row[:2], *row[2 + len(ATTACKS):]]

    note = (f"\nEach method's training length swept over params.yaml `tradeoff.scales` (x its own updates) on the "
            f"validation split (11_tradeoff); the length kept is the one with in-set <= {targets.in_set_max:g} and "
            f"out-of-set <= {targets.out_of_set_max:g} that keeps most (neighbours + retain), scored here on the "
            "evaluation split with the erase table's intervals and targets.\n\n")
    verdict = _md_rows(list(summary.columns), summary.astype(str).values.tolist(), n_text=len(summary.columns))
    return _md_rows(head, [cells(r) for _, r in matched.iterrows()], n_text=2) + note + verdict


def _stage_files(names: list[str], folder: str | Path, stage: str, what: str) -> dict[str, dict]:
    """The stage's JSON file per name (a family or a method), or FileNotFoundError saying what to run."""
    out = {}
    for name in names:
        path = Path(folder) / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"no {what} for {name!r} at {path}: run `dvc repro {stage}@{name}`")
        out[name] = load_json(path)
    return out


def relearn_curves(relearn: RelearnParams, relearn_dir: str | Path, confidence: float) -> pd.DataFrame:
    """Every checkpoint of the relearn stage, one row per (concept, method, step), after each family's base row
    (method "base", no step); in-set and out-of-set rates with Wilson intervals."""
    rows = []
    for concept, run in _stage_files(relearn.concepts, relearn_dir, "relearn", "relearning run").items():
        if missing := [m for m in relearn.methods if m not in run["methods"]]:
            raise ValueError(f"{relearn_dir}/{concept}.json has no run of {missing}: "
                             f"run `dvc repro -f relearn@{concept}`")
        rows.append(run["base"] | {"concept": concept, "method": "base"})
        rows += [r | {"concept": concept, "method": m} for m in relearn.methods for r in run["methods"][m]["curve"]]
    curves = pd.DataFrame(rows).reindex(columns=["concept", "method", "step", "seconds", "loss", "in_set",
                                                  "out_of_set", "in_set_n", "out_of_set_n"])
    for rate in ("in_set", "out_of_set"):
        ends = [interval(r, int(n), confidence) for r, n in zip(curves[rate], curves[f"{rate}_n"])]
        curves[f"{rate}_lo"], curves[f"{rate}_hi"] = [e[0] for e in ends], [e[1] for e in ends]
    return curves


def relearn_table(curves: pd.DataFrame, relearn: RelearnParams) -> pd.DataFrame:
    """Per family and method: the in-set rate of the erased model (step 0) and after the whole fine-tune, and
    the first checkpoint at which it reaches `relearn.returned` (empty: not within the last checkpoint)."""
    rows = []
    for (concept, method), g in curves[curves.method != "base"].groupby(["concept", "method"], sort=False):
        first, last = g.iloc[0], g.iloc[-1]
        rows.append({"concept": concept, "method": method, "erased_in_set": first.in_set,
                     "returned_at": returned_at(g.to_dict("records"), relearn.returned),
                     "final_step": int(last.step), "final_in_set": last.in_set,
                     "final_in_set_lo": last.in_set_lo, "final_in_set_hi": last.in_set_hi})
    return pd.DataFrame(rows)


def relearn_markdown(table: pd.DataFrame, relearn: RelearnParams) -> str:
    """Steps until the concept is back, family by method (the `relearn_table`)."""
    methods = list(relearn.methods)
    wide = table.pivot(index="concept", columns="method", values="returned_at").reindex(
        index=list(dict.fromkeys(table.concept)), columns=methods)
    last = int(table.final_step.max())
    rows = [[c, *["not erased" if v == 0 else f"> {last}" if pd.isna(v) else f"{int(v)}" for v in wide.loc[c]]]
            for c in wide.index]
    note = (f"\nFine-tuning steps until the family's in-set rate is back at {relearn.returned:g} or above (the "
            f"first of params.yaml `relearn.checkpoints` that reaches it; > {last}: not within the fine-tune; not "
            "erased: the erased model drew it that often before any fine-tuning). "
            "Every erased model is fine-tuned the same way on the base model's own images of the family "
            "(12_relearn).\n")
    return _md_rows(["family", *methods], rows, n_text=1) + note


def multi_curves(multi: MultiParams, multi_dir: str | Path, confidence: float) -> pd.DataFrame:
    """The multi stage's rows, one per (method, count) after a base row per method (count 0): how often the
    erased concepts are still drawn (`erased`, and `first` for the concept every set contains) and the retained
    concepts' accuracy, also relative to the base model's; Wilson intervals on both rates."""
    rows = []
    for method, run in _stage_files(multi.methods, multi_dir, "multi", "multi-concept run").items():
        if [r["count"] for r in run["rows"]] != multi.counts:
            raise ValueError(f"{multi_dir}/{method}.json has counts {[r['count'] for r in run['rows']]}, not "
                             f"params.yaml's {multi.counts}: run `dvc repro -f multi@{method}`")
        first = run["order"][0][0]
        base = run["base"]
        for r in [base | {"count": 0, "concepts": [k for k, _ in run["order"]], "seconds": 0.0}, *run["rows"]]:
            # The base row's "erased" is over every concept of the longest list; each count's over its own.
            rows.append({"method": method, "count": r["count"], "first_concept": first,
                         "first": r["per_concept"][first],
                         "erased": r["erased"], "erased_n": r["erased_n"], "retain_all": r["retain_all"],
                         "retain_all_n": r["retain_all_n"],
                         # An untrained model keeps nothing to compare with: no ratio, rather than a crash.
                         "retain_all_vs_base": r["retain_all"] / base["retain_all"] if base["retain_all"] else nan,
                         "seconds": r["seconds"]})
    curves = pd.DataFrame(rows)
    for rate in ("erased", "retain_all"):
        ends = [interval(v, int(n), confidence) for v, n in zip(curves[rate], curves[f"{rate}_n"])]
        curves[f"{rate}_lo"], curves[f"{rate}_hi"] = [e[0] for e in ends], [e[1] for e in ends]
    return curves


def multi_markdown(curves: pd.DataFrame) -> str:
    """Erased concepts still drawn and retained concepts kept (x base), method by number erased."""
    counts = sorted(set(curves["count"]) - {0})
    head = ["method", *[f"{n} erased" for n in counts]]
    rows = []
    for method, g in curves.groupby("method", sort=False):
        g = g.set_index("count")
        rows.append([method, *[f"{g.erased[n]:.2f} / " + ("-" if pd.isna(g.retain_all_vs_base[n]) else
                                                          f"{g.retain_all_vs_base[n]:.2f}") for n in counts]])
    note = ("\nEach cell: how often the erased concepts are still drawn on their canonical prompts (0 is complete "
            "erasure) / the retained concepts' accuracy as a fraction of the base model's, for one run erasing that "
            "many concepts with the erase stage's config (13_multi).\n")
    return _md_rows(head, rows, n_text=1) + note


def targets_met(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: how many families meet every target, which, and which miss only within sampling noise."""
    rows = {}
    for method, g in table[table.method != "base"].groupby("method", sort=False):
        met, noisy = g.missed == "", (g.missed != "") & (g.missed_clearly == "")
        rows[method] = {"met": f"{met.sum()}/{len(g)}", "meets": ", ".join(g.concept[met]),
                        "missed_within_noise": ", ".join(g.concept[noisy])}
    return pd.DataFrame.from_dict(rows, orient="index")


def _side_by_side(table: pd.DataFrame, method: str, rivals: list[str]) -> Iterator[tuple[str, pd.DataFrame, pd.Series]]:
    """(family, its rows by method, `method`'s row) for each family that has `method` and every rival."""
    for concept, block in table.groupby("concept", sort=False):
        by = block.set_index("method")
        if method in by.index and set(rivals) <= set(by.index):
            yield concept, by, by.loc[method]


def robustness_claim(table: pd.DataFrame, method: str, rivals: list[str], targets: ReportParams) -> pd.DataFrame:
    """AdvUnlearn's claim, per family: `method`'s prefix-attack ASR below every rival's while it keeps retain-all
    at least targets.retain_all_min x base. Columns: its ASR, the rivals' lowest (and whose), its retain-all
    relative to base, and whether the claim holds, or which half fails; "nothing to attack" where the base model
    never drew the family on the attacked prompts."""
    rows = []
    for concept, by, own in _side_by_side(table, method, rivals):
        if bool(own.asr_prefix_nothing):
            rows.append({"family": concept, "holds": "nothing to attack"})
            continue
        best = by.loc[rivals].asr_prefix.astype(float)
        lower = float(own.asr_prefix) < float(best.min())
        kept = float(own.retain_all_vs_base) >= targets.retain_all_min
        why = [w for w, bad in (("ASR not lower", not lower), ("retain below target", not kept)) if bad]
        rows.append({"family": concept, f"{method} ASR": float(own.asr_prefix), "rivals' lowest ASR": float(best.min()),
                     "lowest of": ", ".join(best.index[best == best.min()]), "retain-all x base":
                     round(float(own.retain_all_vs_base), 2), "holds": "yes" if not why else "no: " + ", ".join(why)})
    return pd.DataFrame(rows)


RIVALS_LOWEST = "rivals' lowest ASR, "  # the column of the rivals' lowest ASR under one attack


def ours_against_rivals(table: pd.DataFrame, method: str, rivals: list[str], targets: ReportParams) -> pd.DataFrame:
    """Our method against the rivals, per family, on the erase table's rows: does it erase (in-set and out-of-set
    under their targets), keep the neighbours and the other concepts (x base, against the report's targets), is each
    attack's ASR no higher than the lowest rival's, and what its erasure cost relative to DoCo's on the same
    machine. Families whose base model never drew the attacked prompts have no ASR ("nothing to attack")."""
    rows = []
    for concept, by, own in _side_by_side(table, method, rivals):
        row = {"family": concept,
               "erased": bool(own.in_set <= targets.in_set_max and own.out_of_set <= targets.out_of_set_max),
               "neighbours x base": round(float(own.retain_neighbors_vs_base), 2),
               "retain x base": round(float(own.retain_all_vs_base), 2)}
        row["kept"] = bool(row["neighbours x base"] >= targets.neighbors_min
                           and row["retain x base"] >= targets.retain_all_min)
        for col, name in ATTACKS.items():
            if bool(own[f"{col}_nothing"]):
                row[f"ASR {name}"], row[RIVALS_LOWEST + name], row[f"{name}: no higher"] = nan, nan, "nothing to attack"
                continue
            best = by.loc[rivals, col].astype(float)
            row[f"ASR {name}"], row[RIVALS_LOWEST + name] = float(own[col]), float(best.min())
            row[f"{name}: no higher"] = "yes" if float(own[col]) <= float(best.min()) else "no"
        doco = by.seconds.get("doco", nan)
        row["seconds x DoCo"] = round(float(own.seconds) / float(doco), 2) if pd.notna(doco) and doco else nan
        rows.append(row)
    return pd.DataFrame(rows)


def ours_markdown(verdict: pd.DataFrame, method: str, rivals: list[str], targets: ReportParams) -> str:
    """`ours_against_rivals` as markdown: per family, what it keeps and each attack's ASR beside the rivals' lowest."""
    if verdict.empty:
        return f"No family has {method} and its rivals in the erase table: nothing to compare.\n"
    head = ["family", "erased", "nbr. x base", "retain x base",
            *(f"ASR {v} (rivals' lowest)" for v in ATTACKS.values()), "s x DoCo"]
    rows = []
    for _, r in verdict.iterrows():
        asr = ["nothing to attack" if pd.isna(r[f"ASR {v}"]) else
               f"{r[f'ASR {v}']:.2f} ({r[RIVALS_LOWEST + v]:.2f})" + ("" if r[f"{v}: no higher"] == "yes" else " ✗")
               for v in ATTACKS.values()]
        ratios = ["-" if pd.isna(r[c]) else f"{r[c]:.2f}"
                  for c in ("neighbours x base", "retain x base", "seconds x DoCo")]
        rows.append([r.family, "yes" if r.erased else "no", *ratios[:2], *asr, ratios[2]])
    return _md_rows(head, rows, n_text=2) + (
        f"\n{method} per family beside the lowest ASR of {', '.join(rivals)} under each attack (✗: higher than it); "
        f"kept means neighbours >= {targets.neighbors_min:g} x and retain >= {targets.retain_all_min:g} x base; "
        "s x DoCo: its erase seconds over DoCo's, both from the erase stage's records.\n")


def headline_table(table: pd.DataFrame, relearned: pd.DataFrame, targets: ReportParams) -> pd.DataFrame:
    """One row per method over the families: how many it erases (in-set and out-of-set under their targets), the
    median share of neighbours and retained concepts it keeps (x base), its median ASR under each attack, how many
    families meet every target, and the median fine-tuning steps until the family is back (`relearn_table`)."""
    rows = {}
    erased_rows = table[table.method != "base"]
    for method, g in erased_rows.groupby("method", sort=False):
        erased = (g.in_set <= targets.in_set_max) & (g.out_of_set <= targets.out_of_set_max)
        back = relearned[relearned.method == method].returned_at if len(relearned) else pd.Series(dtype=float)
        rows[method] = {
            "families erased": f"{int(erased.sum())}/{len(g)}",
            "neighbours x base": g.retain_neighbors_vs_base.median(),
            "retain x base": g.retain_all_vs_base.median(),
            **{f"ASR {name}": g.loc[~g[f"{col}_nothing"].astype(bool), col].astype(float).median()
               for col, name in ATTACKS.items()},
            "every target met": f"{int((g.missed == '').sum())}/{len(g)}",
            "back after (steps)": back.astype(float).median() if back.notna().any() else nan,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method").reset_index()


def headline_markdown(headline: pd.DataFrame) -> str:
    """The headline table as markdown: medians to two decimals, steps as whole numbers ("-" where none)."""
    def cell(col: str, v: object) -> str:
        if isinstance(v, str):
            return v
        if pd.isna(v):
            return "-"
        return f"{v:.0f}" if col.startswith("back") else f"{v:.2f}"

    cells = pd.DataFrame({c: [cell(c, v) for v in headline[c]] for c in headline.columns})
    return cells.to_markdown(index=False, disable_numparse=True,
                             colalign=["left"] + ["right"] * (len(cells.columns) - 1)) + "\n"


def claim_markdown(claim: pd.DataFrame, method: str, targets: ReportParams) -> str:
    """The robustness claim per family as a markdown table, with the rule it checks."""
    if claim.empty:
        return f"No family has {method} and its rivals in the erase table: nothing to compare.\n"
    rows = [["" if pd.isna(v) else f"{v:.2f}" if isinstance(v, float) else str(v) for v in r] for r in claim.values]
    body = _md_rows(list(claim.columns), rows, n_text=len(claim.columns))
    return body + (f"\nThe claim, per family: {method}'s prefix-attack ASR is below each rival's while its "
                   f"retain-all stays >= {targets.retain_all_min:g} x base (rates from the erase table; ties are not"
                   " below).\n")


def _asr(r: pd.Series, col: str, nothing: str = "nothing to attack") -> str:
    """An attack success rate, or what stands in for it where the base model never drew the family."""
    return nothing if bool(r[f"{col}_nothing"]) else f"{r[col]:.2f}"


MD_RATES = {"in_set": "in-set", "out_of_set": "out-of-set", "retain_neighbors": "neighbours",
            "retain_all": "retain"}


def _rate(r: pd.Series, col: str) -> str:
    """A rate with its interval, compactly: `0.75 (0.60-0.86)`."""
    return f"{r[col]:.2f} ({r[f'{col}_lo']:.2f}-{r[f'{col}_hi']:.2f})"


def _missed(r: pd.Series) -> str:
    """The targets an erased row misses, starred where the miss lies within sampling noise."""
    if r.method == "base":
        return ""
    missed, clear = ("" if pd.isna(v) else str(v).split() for v in (r.missed, r.missed_clearly))
    return ", ".join(MD_RATES[m] + ("" if m in clear else "*") for m in missed) or "none"


def _asr_cell(r: pd.Series, col: str) -> str:
    """An ASR with its interval; what stands in for it where there was nothing to attack or no attack ran."""
    if pd.isna(r[f"{col}_nothing"]):
        return "not attacked"
    return _asr(r, col) if bool(r[f"{col}_nothing"]) else _rate(r, col)


def _cells(r: pd.Series) -> list[str]:
    """A row's measured cells, from in-set to the targets missed."""
    secs = "" if pd.isna(r.seconds) else f"{r.seconds:.0f}"
    return [_rate(r, "in_set"), _rate(r, "out_of_set"), *(_asr_cell(r, a) for a in ATTACKS),
            _rate(r, "retain_neighbors"), _rate(r, "retain_all"), f"{r.world_fid:.1f}", secs, _missed(r)]


MD_HEAD = ["in-set ↓", "out-of-set ↓", *(f"ASR {v} ↓" for v in ATTACKS.values()), "neighbours ↑", "retain ↑",
           "world-FID ↓", "seconds", "targets missed"]
MD_ALIGN = [*["--:"] * (len(MD_HEAD) - 1), "---"]  # numbers right-aligned


def _md_rows(head: list[str], rows: list[list[str]], n_text: int | None = None) -> str:
    """A markdown table; after the first `n_text` columns (default: all but the measured cells) numbers are
    right-aligned, and the last column (the targets missed) is text."""
    n_text = len(head) - len(MD_ALIGN) if n_text is None else n_text
    align = ["---"] * n_text + ["--:"] * (len(head) - n_text - 1) + ["---"] * (len(head) > n_text)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, align, *rows]) + "\n"


def markdown_table(table: pd.DataFrame, targets: ReportParams) -> str:
    """The erase table (from `erase_table`) as a markdown table: one row per (family, method), the base row
    first, every rate with its interval, and a footnote stating the targets behind the last column."""
    body = _md_rows(["family", "method", *MD_HEAD], [[r.concept, r.method, *_cells(r)] for _, r in table.iterrows()])
    conf = f"{targets.confidence:.0%}"
    note = (f"\nRates are shares of judged images, each with its {conf} Wilson interval. Targets: in-set <= "
            f"{targets.in_set_max:g}, out-of-set <= {targets.out_of_set_max:g}, neighbours >= {targets.neighbors_min:g}"
            f" x base, retain (other concepts) >= {targets.retain_all_min:g} x base; * marks a miss within sampling"
            " noise (the interval reaches the target). World-FID is measured on fewer images per row than in the"
            " world table, so compare it within this table. Seconds: one erase on the machine that ran it. ASR"
            " (08_attack): share of the attacked training prompts' fresh images drawn as the family without attack or"
            " under it; concept inversion (its strongest start) is scored on its own prompts with the learned word, and"
            " the context attack is the white-box upper bound on every text-side attack.\n")
    return body + note


def _keyed_markdown(table: pd.DataFrame, key: str, key_head: str, note: str) -> str:
    """Rows of family, method and one more key column, then the measured cells, and a footnote."""
    rows = [[r.concept, r.method, r[key], *_cells(r)] for _, r in table.iterrows()]
    return _md_rows(["family", "method", key_head, *MD_HEAD], rows) + note


def ablate_markdown(table: pd.DataFrame) -> str:
    """The ablation table (from `ablate_table`): per family and method, the reference row, then each arm."""
    note = ("\nEach arm is its method's erase-table row with the knobs of params.yaml `ablate.arms` changed, trained on"
            " the same anchors and judged on the same prompts and seeds (09_ablate); the first row of each block is"
            " the erase table's own. Intervals, targets and ASR as in the erase table.\n")
    return _keyed_markdown(table, "label", "arm", note)


def world_markdown(metrics: dict) -> str:
    """The world's numbers (`data/metrics/world.json`: judge, base model, pretraining) as a markdown table."""
    pair = "{:.4f} / {:.4f}".format
    oos = sorted(metrics["base_oos_rate"].items(), key=lambda kv: -kv[1])
    rows = [("concepts (each in both styles)", f"{metrics['n_concepts']}"),
            ("judge accuracy, held-out renders (concept / style)",
             pair(metrics["judge_concept_acc"], metrics["judge_style_acc"])),
            ("base model, in-set prompts (concept / style accuracy)",
             "{:.3f} / {:.3f}".format(metrics["base_concept_acc"], metrics["base_style_acc"])),
            ("base model, out-of-set prompts (rate the family is drawn)",
             ", ".join(f"{f} {v:.2f}" for f, v in oos)),
            ("world-FID of the base model (judge features)", f"{metrics['world_fid']:.2f}")]
    if "pretrain_seconds" in metrics:
        extra = [f"{metrics['unet_parameters'] / 1e6:.1f} M-parameter UNet" if "unet_parameters" in metrics else "",
                 metrics.get("precision", ""), metrics.get("pretrain_hardware", "")]
        rows.append(("pretraining", ", ".join([f"{metrics['pretrain_seconds'] / 60:.1f} min", *filter(None, extra)])))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def sync_block(text: str, name: str, block: str) -> str:
    """`text` with the lines between `<!-- {name}:start -->` and `<!-- {name}:end -->` replaced by `block`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one {start} ... {end} pair of markers, in that order")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{block.strip(chr(10))}\n{end}{tail}"


# The repository map of the README: (path, what it holds); a cdc part's line count is added from the tree.
LAYOUT = [
    ("cdc/", "the library core: model bundle, text encoders, sampler, codec, judge, world, LoRA and encoder files"),
    ("cdc/methods/", "DoCo, ESD, CA, AdvUnlearn, RDC (ours): training loops on a model bundle, no I/O"),
    ("cdc/attacks/", "prefix attack, concept inversion, Ring-A-Bell, context attack, attack success rate"),
    ("cdc/stages/", "what the DVC stages run: the params schema, the notebook runner, each stage's code"),
    ("cdc/cli/", "the `cdc` command: generate, judge, erase, evaluate, attack, sweep"),
    ("notebooks/", "one per stage, `NN_<stage>.ipynb` = DVC stage `<stage>` = params.yaml section `<stage>`"),
    ("data/", "stage outputs: small ones and executed notebooks in git, the erased models in DVC's cache"),
    ("paper/", "the paper (Typst), compiled by the `paper` stage from the report's files"),
    ("tests/", "pytest, CPU and offline; a smoke run of every notebook"),
    ("benchmarks/", "one script per standing question; what was decided and why in NOTES.md"),
]
LIBRARY = ("cdc/", "cdc/methods/", "cdc/attacks/")  # what a reader studies; the stages and the CLI run it


def python_lines(root: Path, part: str) -> int:
    """Lines of the .py files of a cdc part: the package's own modules and world/ for `cdc/`, else the folder."""
    folder = root / part
    if part == "cdc/":
        files = [*folder.glob("*.py"), *(folder / "world").glob("*.py")]
    else:
        files = list(folder.rglob("*.py"))
    return sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)


def layout_markdown(root: str | Path = ".") -> str:
    """The README's map of the repository, with each part of cdc/ and its line count to the hundred (an edit does
    not make the README stale; a new module may)."""
    root = Path(root)
    rows = []
    for path, what in LAYOUT:
        lines = f"~{round(python_lines(root, path), -2):,}" if path.startswith("cdc/") else ""
        rows.append((f"`{path}`", what, lines))
    library = sum(python_lines(root, p) for p in LIBRARY)
    table = pd.DataFrame(rows, columns=["", "what", "lines"])
    return (table.to_markdown(index=False, disable_numparse=True, colalign=["left", "left", "right"]) +
            f"\n\nThe library a reader studies (core, methods, attacks) is about {round(library, -2):,} lines; the "
            "stages and the command line call it, and it calls neither.\n")


def _generated(*names: str) -> dict[str, str]:
    """Block name -> the report's markdown file it copies (`erase-table` -> paper/generated/erase_table.md)."""
    return {name: f"paper/generated/{name.replace('-', '_')}.md" for name in names}


# The generated blocks of each markdown file, relative to the repository root.
SYNCED = {
    "README.md": _generated("headline-table"),
    "RESULTS.md": _generated("world-table", "erase-table", "claim-table", "ours-table", "ablate-table",
                             "transfer-table", "matched-table", "relearn-table", "multi-table"),
}


def sync_file(path: str | Path, blocks: dict[str, str]) -> bool:
    """Copy the generated tables (paths relative to the file's folder) into its marked blocks, and the layout
    into a `layout` block where there is one, atomically; True if the file changed."""
    path = Path(path)
    text = new = path.read_text(encoding="utf-8")
    for name, source in blocks.items():
        new = sync_block(new, name, (path.parent / source).read_text(encoding="utf-8"))
    if "<!-- layout:start -->" in new:
        new = sync_block(new, "layout", layout_markdown(path.parent))
    if new != text:
        save_text(new, path)
    return new != text


def sync(root: str | Path = ".") -> list[str]:
    """Bring README.md and RESULTS.md under `root` in line with the report's files; the names of those changed."""
    return [name for name, blocks in SYNCED.items() if sync_file(Path(root) / name, blocks)]


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--sync"]:
        sys.exit("usage: python -m cdc.stages.report --sync  (copies paper/generated/*.md into README.md and "
                 "RESULTS.md)")
    changed = sync()
    print(f"updated {', '.join(changed)}" if changed else "README.md and RESULTS.md already in sync")
