"""How long each pipeline stage took, from the executed notebooks DVC wrote (papermill records every run's times).

    python benchmarks/stage_times.py [--executed data/executed] [--json out.json]

One row per stage: its runs (a matrix stage has one per item), their total and longest minutes, the span of their
start times and the wall-clock minutes from the first start to the last end (what DVC and papermill add between
notebooks is the difference; the `all` row spans every selected run). Executed notebooks of stages that were
`dvc commit`ted rather than re-run keep the times of the run that made them, so the start dates say which run each
total comes from; `--since` keeps only runs that started at or after an ISO date-time, e.g. the start of one
clean-clone `dvc repro`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cdc.io import save_json

NAME = re.compile(r"^(\d\d)_([a-z_]+?)(?:_.+)?\.ipynb$")  # 06_erase_church_doco.ipynb -> ("06", "erase")


def runs(executed: Path) -> list[dict[str, Any]]:
    """One record per executed notebook: stage, item, start (datetime) and seconds."""
    out = []
    for path in sorted(executed.glob("[0-9][0-9]_*.ipynb")):
        match = NAME.match(path.name)
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
        if not match or meta.get("duration") is None or not meta.get("start_time"):
            continue
        out.append({"stage": f"{match.group(1)}_{match.group(2)}", "notebook": path.name,
                    "start": datetime.fromisoformat(meta["start_time"]), "seconds": float(meta["duration"])})
    return out


def wall_min(records: list[dict[str, Any]]) -> float:
    """Minutes from the first start to the last end of these runs."""
    end = max(r["start"] + timedelta(seconds=r["seconds"]) for r in records)
    return round((end - min(r["start"] for r in records)).total_seconds() / 60, 1)


def stage_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage: runs, total and longest minutes, first and last start, wall-clock minutes."""
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_stage[r["stage"]].append(r)
    return [{"stage": stage, "runs": len(rs), "total_min": round(sum(r["seconds"] for r in rs) / 60, 1),
             "longest_min": round(max(r["seconds"] for r in rs) / 60, 1),
             "first_start": min(r["start"] for r in rs).isoformat(timespec="minutes"),
             "last_start": max(r["start"] for r in rs).isoformat(timespec="minutes"), "wall_min": wall_min(rs)}
            for stage, rs in sorted(by_stage.items())]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--executed", type=Path, default=Path("data/executed"), help="folder of executed notebooks")
    ap.add_argument("--since", default=None, help="only runs started at or after this ISO date-time (UTC)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    if not args.executed.is_dir():
        ap.error(f"--executed {args.executed} is not a folder (run `dvc repro` or `dvc pull` first)")
    records = runs(args.executed)
    if args.since:
        since = datetime.fromisoformat(args.since)
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        records = [r for r in records if r["start"] >= since]
    table = stage_table(records)
    print(f"{'stage':<14}{'runs':>5}{'total min':>11}{'longest':>9}{'wall min':>10}  started")
    for row in table:
        print(f"{row['stage']:<14}{row['runs']:>5}{row['total_min']:>11.1f}{row['longest_min']:>9.1f}"
              f"{row['wall_min']:>10.1f}  {row['first_start']} .. {row['last_start']}")
    if records:
        print(f"{'all':<14}{sum(r['runs'] for r in table):>5}{sum(r['total_min'] for r in table):>11.1f}"
              f"{'':>9}{wall_min(records):>10.1f}")
    if args.json:
        save_json(table, args.json)
    return table


if __name__ == "__main__":
    main()
