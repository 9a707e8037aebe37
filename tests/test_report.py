"""The report's markdown tables, and the copies in README.md and RESULTS.md staying in sync with the pipeline's."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cdc.config import ReportParams
from cdc.io import save_json
from cdc.stages.report import (
    SYNCED,
    ablate_markdown,
    ablate_table,
    claim_markdown,
    context_budget_curves,
    erase_table,
    headline_markdown,
    headline_table,
    layout_markdown,
    markdown_table,
    matched_markdown,
    matched_summary,
    matched_table,
    ours_against_rivals,
    ours_markdown,
    robustness_claim,
    sync,
    sync_block,
    sync_file,
    tradeoff_points,
    transfer_markdown,
    transfer_table,
    world_markdown,
)
from cdc.stages.sections.ablate import AblateParams, ArmParams
from cdc.stages.sections.tradeoff import TradeoffParams
from cdc.stages.sections.transfer import TransferParams

REPO = Path(__file__).resolve().parents[1]
TARGETS = ReportParams(in_set_max=0.05, out_of_set_max=0.15, neighbors_min=0.9, retain_all_min=0.95, confidence=0.95)
COUNTS = {"in_set_n": 40, "out_of_set_n": 32, "retain_all_n": 48, "retain_neighbors_n": 40}
WORLD = {"n_concepts": 330, "judge_concept_acc": 0.9996, "judge_style_acc": 1.0, "base_concept_acc": 0.981,
         "base_style_acc": 0.998, "base_oos_rate": {"church": 0.81, "parachute": 0.94}, "world_fid": 1.1994,
         "pretrain_seconds": 3150.0, "unet_parameters": 7183564, "precision": "bf16"}


@pytest.fixture
def table(tmp_path) -> pd.DataFrame:
    """Two families, base + two methods each, as `erase_table` builds them from evaluation files."""
    for concept in ("church", "fish"):
        rows = [{"concept": concept, "method": m, "in_set": i, "out_of_set": o, "retain_all": a,
                 "retain_neighbors": r, "world_fid": f, **COUNTS}
                for m, i, o, a, r, f in [("base", 0.9, 0.75, 1.0, 1.0, 3.2), ("doco", 0.0, 0.0, 0.9375, 0.4, 6.8),
                                         ("esd", 0.0, 0.0625, 1.0, 0.95, 30.0)]]
        for row in rows:  # one file per row, as the evaluate and attack stages write them
            save_json(row, tmp_path / "eval" / concept / f"{row['method']}.json")
            save_json(attack_row(concept, row["method"]), tmp_path / "attack" / concept / f"{row['method']}.json")
        save_json({"seconds": 82.8, "peak_mem_mb": 749, "hardware": "Some CPU, 2 cores, torch 2 threads"},
                  tmp_path / "erase" / concept / "doco.json")
    return erase_table(["church", "fish"], ["doco", "esd"], tmp_path / "eval", tmp_path / "erase", TARGETS,
                       tmp_path / "attack")


def attack_row(concept: str, method: str) -> dict:
    """An attack-stage row as `cdc.stages.attack.flat_row` writes it: church attacked (10 prompts), fish with nothing to
    attack (the base model never drew it on those prompts)."""
    nothing = concept == "fish"
    rate = {"base": 1.0, "doco": 0.7, "esd": 0.1}[method]
    out = {"concept": concept, "method": method, "pre_asr": None if nothing else 0.0,
           "pre_asr_lo": None if nothing else 0.0, "pre_asr_hi": None if nothing else 0.28}
    for key in ("asr_prefix", "asr_inversion", "asr_ringabell", "asr_context"):
        out |= {key: None if nothing else rate, f"{key}_lo": None if nothing else rate / 2,
                f"{key}_hi": None if nothing else min(1.0, rate + 0.2), f"{key}_n": 10, f"{key}_nothing": nothing}
    return out


def rows_of(md: str) -> list[list[str]]:
    """The body rows of the first markdown table in `md`, as stripped cells."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_markdown_table_has_every_family_and_method_with_intervals(table):
    md = markdown_table(table, TARGETS)
    head = md.splitlines()[0]
    for col in ("family", "method", "in-set", "out-of-set", "ASR prefix attack", "ASR concept inversion",
                "ASR Ring-A-Bell", "ASR context (upper bound)", "neighbours", "retain", "world-FID", "seconds",
                "targets missed"):
        assert col in head
    rows = rows_of(md)
    assert [(r[0], r[1]) for r in rows] == [(c, m) for c in ("church", "fish") for m in ("base", "doco", "esd")]
    assert all(len(r) == 13 for r in rows)
    for r in rows:
        rates = r[2:10] if r[0] == "church" else r[2:4] + r[8:10]
        for cell in rates:  # "rate (lo-hi)": the interval brackets the rate
            rate, lo, hi = (float(x) for x in cell.replace("(", "").replace(")", "").replace("-", " ").split())
            assert lo <= rate <= hi
    doco = rows[1]
    assert doco[2].startswith("0.00 (0.00-") and doco[9].startswith("0.94 (")
    assert doco[4].startswith("0.70 (") and rows[2][4].startswith("0.10 (")
    assert rows[3][4] == rows[3][5] == rows[3][6] == rows[3][7] == "nothing to attack"  # fish: never 0 %
    assert doco[11] == "83"  # seconds from the erase run; the base row has none
    assert rows[0][11] == "" and rows[0][12] == ""
    # 16/40 neighbours misses clearly; 45/48 retained misses only within sampling noise (starred)
    assert doco[12] == "neighbours, retain*"
    assert rows[2][12] == "none"  # esd meets every target
    assert "95% Wilson interval" in md and "out-of-set <= 0.15" in md


def test_markdown_table_reads_back_from_the_csv(table, tmp_path):
    """The notebook's CSV (empty `missed` read as NaN) gives the same markdown as the live table."""
    path = tmp_path / "erase.csv"
    table.to_csv(path, index=False, float_format="%.4f")
    assert markdown_table(pd.read_csv(path), TARGETS) == markdown_table(table, TARGETS)


def test_erase_table_records_where_each_erasure_ran(table):
    assert set(table[table.method == "doco"].hardware) == {"Some CPU, 2 cores, torch 2 threads"}
    assert table[table.method == "base"].hardware.isna().all()  # nothing was erased: no run record


def test_erase_table_needs_every_row(table, tmp_path):
    (tmp_path / "attack" / "church" / "doco.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"dvc repro attack@church-doco"):
        erase_table(["church"], ["doco"], tmp_path / "eval", tmp_path / "erase", TARGETS, tmp_path / "attack")
    with pytest.raises(FileNotFoundError, match=r"dvc repro attack_base@church"):
        erase_table(["church"], ["doco"], tmp_path / "eval", tmp_path / "erase", TARGETS, tmp_path / "nowhere")
    (tmp_path / "eval" / "fish" / "base.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"dvc repro evaluate_base@fish"):
        erase_table(["fish"], ["doco"], tmp_path / "eval", tmp_path / "erase", TARGETS, tmp_path / "attack")


def test_family_grid_stacks_each_rows_strip_base_first(tmp_path):
    from cdc.io import save_npz
    from cdc.stages.report import family_grid

    for i, method in enumerate(["base", "doco", "esd"]):
        images = np.full((4, 8, 8, 3), 60 * i, dtype=np.uint8)
        save_npz(tmp_path / "church" / f"{method}.npz", images=images, labels=np.array([method] * 4))
    grid = family_grid(tmp_path, "church", ["doco", "esd"])
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[0] > grid.shape[1] / 4 * 2
    with pytest.raises(FileNotFoundError):
        family_grid(tmp_path, "church", ["ca"])


def test_world_markdown():
    md = world_markdown(WORLD)
    assert "| 330 |" in md and "0.9996 / 1.0000" in md and "0.981 / 0.998" in md and "| 1.20 |" in md
    assert "parachute 0.94, church 0.81" in md  # highest rate first
    assert "52.5 min, 7.2 M-parameter UNet, bf16" in md
    without = {k: v for k, v in WORLD.items() if k not in ("pretrain_seconds", "unet_parameters", "precision")}
    assert "pretraining" not in world_markdown(without)


def test_sync_block_replaces_only_between_markers():
    text = "intro\n<!-- t:start -->\nold\nrows\n<!-- t:end -->\nafter\n"
    new = sync_block(text, "t", "new\n")
    assert new == "intro\n<!-- t:start -->\nnew\n<!-- t:end -->\nafter\n"
    assert sync_block(new, "t", "new") == new  # idempotent; trailing newlines do not matter
    with pytest.raises(ValueError, match="markers"):
        sync_block(text, "other", "x")
    with pytest.raises(ValueError, match="markers"):
        sync_block("<!-- t:end -->\n<!-- t:start -->\n", "t", "x")


def test_sync_rewrites_the_blocks(tmp_path):
    blocks = SYNCED["RESULTS.md"]
    for name, path in blocks.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(f"| {name} |\n")
    results = tmp_path / "RESULTS.md"
    results.write_text("".join(f"# {n}\n<!-- {n}:start -->\nstale\n<!-- {n}:end -->\n" for n in blocks))
    assert sync_file(results, blocks) and "stale" not in results.read_text()
    assert "| erase-table |" in results.read_text()
    assert not sync_file(results, blocks)


def test_readme_and_results_in_sync():
    """README.md and RESULTS.md show the tables the pipeline generated (paper/generated/*.md) and the layout of
    the tree as it is, not hand-copied numbers."""
    for file, blocks in SYNCED.items():
        text = (REPO / file).read_text(encoding="utf-8")
        for name, path in blocks.items():
            generated = (REPO / path).read_text(encoding="utf-8")
            assert sync_block(text, name, generated) == text, (
                f"{file}'s {name} block differs from {path} (written by `dvc repro report`): "
                "run `python -m cdc.stages.report --sync` and commit it")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert sync_block(readme, "layout", layout_markdown(REPO)) == readme, (
        "README.md's layout block is stale: run `python -m cdc.stages.report --sync`")
    assert len(readme.splitlines()) <= 120, "README.md is over 120 lines: move detail to RESULTS.md"


def test_sync_of_the_repository_changes_nothing(tmp_path):
    """`python -m cdc.stages.report --sync` on a copy of the committed files is a no-op."""
    import shutil

    for name in ["README.md", "RESULTS.md", *{p for blocks in SYNCED.values() for p in blocks.values()}]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "cdc", tmp_path / "cdc", ignore=shutil.ignore_patterns("__pycache__"))
    assert sync(tmp_path) == []


def test_headline_has_one_row_per_method(table):
    relearned = pd.DataFrame([{"concept": "church", "method": "doco", "returned_at": 20.0}])
    headline = headline_table(table, relearned, TARGETS)
    assert list(headline.method) == [m for m in dict.fromkeys(table.method) if m != "base"]
    text = headline_markdown(headline)
    assert text.count("\n") == len(headline) + 2 and "| doco" in text


def ablate_params(**arms) -> AblateParams:
    """An ablate section with the given arms (name -> (method, set, attack))."""
    return AblateParams(concepts=["church"], arms={n: ArmParams(method=m, set=s, label=f"{n} arm", attack=a,
                                                                    anchor=None)
                                                   for n, (m, s, a) in arms.items()})


def test_ablate_table_puts_each_arm_after_its_reference(table, tmp_path):
    ablate = ablate_params(no_surgery=("doco", "surgery=sum prior_weight=0", False), weak=("esd", "steps=10", True))
    arm = {"concept": "church", "in_set": 0.1, "out_of_set": 0.25, "retain_all": 0.5, "retain_neighbors": 1.0,
           "world_fid": 4.0, "seconds": 50.0, **COUNTS}
    save_json(arm | {"arm": "no_surgery", "method": "doco", "label": "no surgery"},
              tmp_path / "ablate" / "church" / "no_surgery.json")
    with pytest.raises(FileNotFoundError, match=r"dvc repro ablate@church-weak"):
        ablate_table(table, ablate, tmp_path / "ablate", TARGETS)
    save_json(arm | {"arm": "weak", "method": "esd", "label": "weak", **attack_row("church", "esd")},
              tmp_path / "ablate" / "church" / "weak.json")
    arms = ablate_table(table, ablate, tmp_path / "ablate", TARGETS)
    assert list(zip(arms.method, arms.arm)) == [("doco", ""), ("doco", "no_surgery"), ("esd", ""), ("esd", "weak")]
    assert arms.retain_all_vs_base.tolist() == [0.9375, 0.5, 1.0, 0.5]  # relative to church's base row
    assert arms.missed.tolist()[1] == "in_set out_of_set retain_all"
    rows = rows_of(ablate_markdown(arms))
    assert [r[2] for r in rows] == ["as in params.yaml", "no surgery", "as in params.yaml", "weak"]
    assert rows[1][5] == "not attacked" and rows[3][5].startswith("0.10 (")  # ASR only where the arm was attacked
    assert rows[0][5].startswith("0.70 (")  # the reference row keeps the attack stage's ASR
    with pytest.raises(ValueError, match="no ca row for church"):
        ablate_table(table, ablate_params(x=("ca", "steps=10", False)), tmp_path / "ablate", TARGETS)


def test_transfer_table_pairs_each_row_with_the_second_unet(table, tmp_path):
    transfer = TransferParams(pretrain="seed=1", concepts=["church"], methods=["doco"])
    path = tmp_path / "transfer.json"
    with pytest.raises(FileNotFoundError, match="dvc repro transfer"):
        transfer_table(table, transfer, path, TARGETS)
    second = {"concept": "church", "out_of_set": 0.5, "retain_all": 0.5, "retain_neighbors": 0.5, "world_fid": 5.0,
              **COUNTS, **attack_row("church", "base")}
    save_json([second | {"method": "base", "in_set": 0.8}], path)
    with pytest.raises(ValueError, match=r"second UNet's rows miss \[\('church', 'doco'\)\]"):
        transfer_table(table, transfer, path, TARGETS)
    save_json([second | {"method": "base", "in_set": 0.8}, second | {"method": "doco", "in_set": 0.1}], path)
    both = transfer_table(table, transfer, path, TARGETS)
    assert list(zip(both.method, both.unet)) == [("base", "first"), ("base", "second"), ("doco", "first"),
                                                 ("doco", "second")]
    assert both.retain_all_vs_base.tolist() == [1.0, 1.0, 0.9375, 1.0]  # each UNet against its own base row
    rows = rows_of(transfer_markdown(both))
    assert [r[2] for r in rows] == ["first", "second", "first", "second"] and rows[3][3].startswith("0.10 (")


def test_robustness_claim_names_the_half_that_fails(table):
    # church: doco's ASR 0.7, esd's 0.1; fish: the base model never drew fish on the attacked prompts.
    claim = robustness_claim(table, "esd", ["doco"], TARGETS)
    assert claim.family.tolist() == ["church", "fish"]
    church = claim.iloc[0]
    assert church["esd ASR"] == 0.1 and church["rivals' lowest ASR"] == 0.7 and church["lowest of"] == "doco"
    assert church.holds == "yes" and claim.iloc[1].holds == "nothing to attack"
    doco = robustness_claim(table, "doco", ["esd"], TARGETS).iloc[0]
    assert doco.holds == "no: ASR not lower, retain below target"  # 0.7 vs 0.1; retain-all 0.9375 x base
    md = claim_markdown(claim, "esd", TARGETS)
    assert "| church | 0.10 | 0.70 | doco | 1.00 | yes |" in md and ">= 0.95 x base" in md
    assert "nothing to compare" in claim_markdown(robustness_claim(table, "esd", ["ca"], TARGETS), "esd", TARGETS)


def test_ours_against_rivals_marks_each_attack(table):
    # church: esd's ASR 0.1 under every attack, doco's 0.7; fish has nothing to attack; only doco has a run record.
    ours = ours_against_rivals(table, "esd", ["doco"], TARGETS)
    church, fish = ours.iloc[0], ours.iloc[1]
    assert church.erased and church.kept
    assert church["neighbours x base"] == 0.95 and church["retain x base"] == 1.0
    assert all(church[f"{v}: no higher"] == "yes" for v in ("prefix attack", "Ring-A-Bell", "context (upper bound)"))
    assert fish["prefix attack: no higher"] == "nothing to attack" and pd.isna(church["seconds x DoCo"])
    doco = ours_against_rivals(table, "doco", ["esd"], TARGETS).iloc[0]
    assert doco["concept inversion: no higher"] == "no" and doco["seconds x DoCo"] == 1.0 and not doco.kept
    md = ours_markdown(ours, "esd", ["doco"], TARGETS)
    assert "| church | yes | 0.95 | 1.00 | 0.10 (0.70) |" in md and "nothing to attack" in md
    assert "0.70 (0.10) ✗" in ours_markdown(ours_against_rivals(table, "doco", ["esd"], TARGETS), "doco", ["esd"],
                                             TARGETS)
    assert "nothing to compare" in ours_markdown(ours_against_rivals(table, "esd", ["ca"], TARGETS), "esd", ["ca"],
                                                 TARGETS)


def test_context_budget_curves_read_every_row(tmp_path):
    for method, by_steps in (("base", {"25": 1.0, "50": 1.0, "100": 1.0}), ("doco", {"25": 0.2, "50": 0.5, "100": 0.9}),
                             ("esd", {"25": None, "50": None, "100": None})):  # esd: nothing to attack
        save_json({"context_fit": {"asr_by_steps": by_steps}}, tmp_path / "church" / f"{method}.json")
    curves = context_budget_curves(["church"], ["doco", "esd"], tmp_path)
    assert list(curves.columns) == ["concept", "method", "steps", "asr"]
    assert curves[curves.method == "doco"].steps.tolist() == [25, 50, 100]
    assert curves[curves.method == "doco"].asr.tolist() == [0.2, 0.5, 0.9] and "esd" not in set(curves.method)


def tradeoff_file(tmp_path: Path, concept: str, esd_reaches: bool) -> None:
    """A tradeoff stage file: doco and esd at two lengths; esd meets the erasure targets only if `esd_reaches`."""
    def point(scale, in_set, nbr):
        return {"scale": scale, "steps": int(100 * scale), "seconds": 10.0 * scale, "in_set": in_set,
                "out_of_set": in_set, "retain_neighbors": nbr, "retain_all": 1.0}

    def evaluated(scale, nbr):
        return point(scale, 0.0, nbr) | {"world_fid": 5.0, **COUNTS}

    esd_end = 0.0 if esd_reaches else 0.5
    save_json({"concept": concept, "scales": [0.5, 1.0],
               "base_validation": {"in_set": 0.9, "out_of_set": 0.8, "retain_neighbors": 0.8, "retain_all": 1.0},
               "methods": {
                   "doco": {"points": [point(0.5, 0.3, 0.8), point(1.0, 0.0, 0.6)], "matched_scale": 1.0,
                            "matched": evaluated(1.0, 0.6)},
                   "esd": {"points": [point(0.5, 0.6, 0.8), point(1.0, esd_end, 0.1)],
                           "matched_scale": 1.0 if esd_reaches else None,
                           "matched": evaluated(1.0, 0.1) if esd_reaches else None}}},
              tmp_path / "tradeoff" / f"{concept}.json")


def test_tradeoff_points_and_matched_rows(table, tmp_path):
    tradeoff_file(tmp_path, "church", esd_reaches=True)
    tradeoff_file(tmp_path, "fish", esd_reaches=False)
    params = TradeoffParams(concepts=["church", "fish"], methods=["doco", "esd"], scales=[0.5, 1.0],
                            validation_seed=1000)
    points = tradeoff_points(params, tmp_path / "tradeoff")
    assert len(points) == 2 * (1 + 2 * 2)  # per family: base, then two methods x two lengths
    assert points[points.method == "base"].scale.tolist() == [0.0, 0.0]
    assert points.retain_neighbors_vs_base.max() == pytest.approx(1.0)  # relative to the validation base row
    matched = matched_table(table, params, tmp_path / "tradeoff", TARGETS)
    assert list(zip(matched.concept, matched.method)) == [("church", "doco"), ("church", "esd"), ("fish", "doco"),
                                                          ("fish", "esd")]
    never = matched[(matched.concept == "fish") & (matched.method == "esd")].iloc[0]
    assert pd.isna(never.scale) and never.missed == "never reaches the erasure targets"
    doco = matched[(matched.concept == "church") & (matched.method == "doco")].iloc[0]
    assert doco.retain_neighbors_vs_base == pytest.approx(0.6)  # against the erase table's (evaluation) base row
    assert "retain_neighbors" in doco.missed.split()  # 0.6 x base misses the neighbours target
    summary = matched_summary(matched)
    assert summary.set_index("family").loc["church", "best"] == "doco"
    assert summary.set_index("family").loc["fish", "never reaches it"] == "esd"
    md = matched_markdown(matched, summary, TARGETS)
    assert "never reaches it" in md and "| church | doco | 1x |" in md
    with pytest.raises(FileNotFoundError, match="dvc repro tradeoff@parachute"):
        tradeoff_points(TradeoffParams(concepts=["parachute"], methods=["doco"], scales=[1.0], validation_seed=1),
                        tmp_path / "tradeoff")
    with pytest.raises(ValueError, match="no sweep of"):
        tradeoff_points(TradeoffParams(concepts=["church"], methods=["ca"], scales=[1.0], validation_seed=1),
                        tmp_path / "tradeoff")


def relearn_file(tmp_path: Path, concept: str) -> None:
    """A relearn stage file: doco back at step 10, esd never back within 20 steps."""
    def curve(rates):
        return [{"step": s, "seconds": float(s), "loss": None if s == 0 else 0.1, "in_set": r, "out_of_set": r / 2,
                 "in_set_n": 40, "out_of_set_n": 32} for s, r in zip((0, 10, 20), rates)]

    save_json({"concept": concept, "returned": 0.5,
               "base": {"in_set": 1.0, "out_of_set": 0.8, "in_set_n": 40, "out_of_set_n": 32},
               "methods": {"doco": {"erase_seconds": 9.0, "curve": curve([0.0, 0.6, 0.9]), "returned_at": 10},
                           "esd": {"erase_seconds": 8.0, "curve": curve([0.0, 0.1, 0.4]), "returned_at": None}}},
              tmp_path / "relearn" / f"{concept}.json")


def test_relearn_curves_table_and_markdown(tmp_path):
    from cdc.stages.report import relearn_curves, relearn_markdown, relearn_table
    from cdc.stages.sections.relearn import RelearnParams

    for concept in ("church", "fish"):
        relearn_file(tmp_path, concept)
    params = RelearnParams(concepts=["church", "fish"], methods=["doco", "esd"], checkpoints=[0, 10, 20],
                           returned=0.5, lr=1e-3, batch_size=8, lora_group="attn", lora_rank=4, max_grad_norm=1.0,
                           weight_decay=0.0, seed=0)
    curves = relearn_curves(params, tmp_path / "relearn", 0.95)
    assert len(curves) == 2 * (1 + 2 * 3) and (curves.in_set_lo <= curves.in_set).all()
    assert (curves.in_set <= curves.in_set_hi).all()
    table = relearn_table(curves, params)
    back = table.set_index(["concept", "method"]).returned_at
    assert back[("church", "doco")] == 10 and pd.isna(back[("fish", "esd")])
    md = relearn_markdown(table, params)
    assert "| church | 10 | > 20 |" in md and "back at 0.5" in md
    undone = relearn_table(curves.assign(in_set=curves.in_set.where(curves.step != 0, 0.8)), params)
    assert "| church | not erased | not erased |" in relearn_markdown(undone, params)  # drawn before any fine-tune
    with pytest.raises(FileNotFoundError, match="dvc repro relearn@parachute"):
        relearn_curves(dataclasses.replace(params, concepts=["parachute"]), tmp_path / "relearn", 0.95)
    with pytest.raises(ValueError, match="has no run of"):
        relearn_curves(dataclasses.replace(params, methods=["ca"]), tmp_path / "relearn", 0.95)


def test_multi_curves_and_markdown(tmp_path):
    from cdc.stages.report import multi_curves, multi_markdown
    from cdc.stages.sections.multi import MultiParams

    def row(count, erased):
        return {"count": count, "seconds": 5.0, "erased": erased, "erased_n": 8 * count,
                "per_concept": {"church": erased, "fish": 0.5}, "retain_all": 0.9, "retain_all_n": 48}

    order = [["church", "house"], ["fish", "tropical fish"]]
    base = {"erased": 1.0, "erased_n": 16, "per_concept": {"church": 1.0, "fish": 1.0}, "retain_all": 1.0,
            "retain_all_n": 48}
    for method, erased in (("doco", 0.0), ("esd", 0.25)):
        save_json({"method": method, "order": order, "base": base, "rows": [row(1, erased), row(2, erased)]},
                  tmp_path / "multi" / f"{method}.json")
    params = MultiParams(counts=[1, 2], families=["church", "fish"], methods=["doco", "esd"], seed=0)
    curves = multi_curves(params, tmp_path / "multi", 0.95)
    assert curves["count"].tolist() == [0, 1, 2, 0, 1, 2] and (curves.first_concept == "church").all()
    assert curves.retain_all_vs_base.tolist() == pytest.approx([1.0, 0.9, 0.9] * 2)
    assert "| esd | 0.25 / 0.90 | 0.25 / 0.90 |" in multi_markdown(curves)
    with pytest.raises(ValueError, match="not params.yaml's"):
        multi_curves(dataclasses.replace(params, counts=[1, 3]), tmp_path / "multi", 0.95)
    with pytest.raises(FileNotFoundError, match="dvc repro multi@ca"):
        multi_curves(dataclasses.replace(params, methods=["ca"]), tmp_path / "multi", 0.95)


def test_multi_curves_survive_a_base_model_that_keeps_nothing(tmp_path):
    from cdc.stages.report import multi_curves, multi_markdown
    from cdc.stages.sections.multi import MultiParams

    row = {"count": 1, "seconds": 1.0, "erased": 0.0, "erased_n": 8, "per_concept": {"church": 0.0},
           "retain_all": 0.0, "retain_all_n": 8}
    base = row | {"erased": 1.0, "per_concept": {"church": 1.0}}
    save_json({"method": "doco", "order": [["church", "house"]], "base": base, "rows": [row]},
              tmp_path / "multi" / "doco.json")
    curves = multi_curves(MultiParams(counts=[1], families=["church"], methods=["doco"], seed=0), tmp_path / "multi",
                          0.95)
    assert curves.retain_all_vs_base.isna().all() and "| doco | 0.00 / - |" in multi_markdown(curves)
