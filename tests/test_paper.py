"""The paper stage: every file the paper reads is checked first, and paper/main.typ compiles on tiny inputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ruamel.yaml import YAML

from cdc.io import save_image
from cdc.stages.paper import build_paper, check_inputs, paper_inputs
from cdc.stages.params import read_yaml

REPO = Path(__file__).resolve().parents[1]
RATES = ["in_set", "out_of_set", "retain_neighbors", "retain_all"]
ASRS = ["asr_prefix", "asr_inversion"]


def row(concept: str, method: str, rate: float, nothing: object = False, **extra) -> dict:
    """One row with the columns of data/metrics/erase.csv (rates, intervals, counts, ASR, misses)."""
    out = {"concept": concept, "method": method, "world_fid": 4.2, "seconds": None if method == "base" else 80.0,
           "missed": "" if method == "base" else "retain_all", "missed_clearly": ""}
    for col in RATES:
        out |= {col: rate, f"{col}_lo": rate / 2, f"{col}_hi": min(1.0, rate + 0.1), f"{col}_n": 40}
    for col in ASRS:
        out |= {col: rate, f"{col}_lo": rate / 2, f"{col}_hi": min(1.0, rate + 0.2), f"{col}_n": 10,
                f"{col}_nothing": nothing}
    return out | extra


@pytest.fixture
def generated(tmp_path) -> dict:
    """A tiny set of every file the paper reads, as the report and base stages write them."""
    metrics, gen = tmp_path / "metrics", tmp_path / "generated"
    metrics.mkdir(), gen.mkdir()
    erase = [row("church", m, r) for m, r in (("base", 1.0), ("doco", 0.0), ("advunlearn", 0.1))]
    pd.DataFrame(erase).to_csv(metrics / "erase.csv", index=False, float_format="%.4f")
    arms = [row("church", "advunlearn", 0.1, arm="", label="as in params.yaml"),
            row("church", "advunlearn", 0.3, nothing=None, arm="steps0", label="0 inner steps"),
            row("church", "doco", 0.0, arm="", label="as in params.yaml"),  # DoCo's arms feed a computed paragraph
            row("church", "doco", 0.5, nothing=None, arm="eps", label="D on eps")]
    pd.DataFrame(arms).to_csv(gen / "ablate_table.csv", index=False, float_format="%.4f")
    pairs = [row("church", m, r, unet=u) for m, r in (("base", 1.0), ("advunlearn", 0.1)) for u in ("first", "second")]
    pd.DataFrame(pairs).to_csv(gen / "transfer_table.csv", index=False, float_format="%.4f")
    matched = [row("church", "doco", 0.0, nothing=None, scale=1.5),  # a method that never erases has no rates
               {"concept": "church", "method": "advunlearn", "missed": "never reaches the erasure targets"}]
    pd.DataFrame(matched).to_csv(gen / "matched_table.csv", index=False, float_format="%.4f")
    verdict = [{"family": "church", "best": "doco", "runner-up": "", "intervals overlap": "",
                "never reaches it": "advunlearn"}]
    pd.DataFrame(verdict).to_csv(gen / "matched_verdict.csv", index=False)
    # doco back after 25 steps, esd never back, ca never erased
    relearned = [{"concept": "church", "method": m, "erased_in_set": 0.0, "returned_at": back, "final_step": 200,
                  "final_in_set": 0.9} for m, back in (("doco", 25), ("esd", None), ("ca", 0))]
    pd.DataFrame(relearned).to_csv(gen / "relearn_table.csv", index=False)
    many = [{"method": m, "count": n, "first_concept": "church", "first": 0.1, "erased": 0.2,
             "retain_all_vs_base": 0.9} for m in ("doco", "esd") for n in (0, 1, 30)]
    pd.DataFrame(many).to_csv(gen / "multi_curves.csv", index=False)
    attacks = ("prefix attack", "concept inversion", "Ring-A-Bell", "context (upper bound)")
    ours = [{"family": "church", "erased": True, "neighbours x base": 0.9, "retain x base": 0.97, "kept": True,
             **{k: v for a in attacks for k, v in ((f"ASR {a}", 0.1), (f"rivals' lowest ASR, {a}", 0.2),
                                                  (f"{a}: no higher", "yes"))}, "seconds x DoCo": 1.8}]
    pd.DataFrame(ours).to_csv(gen / "ours_table.csv", index=False)
    world = {"n_concepts": 12, "judge_concept_acc": 0.99, "judge_style_acc": 1.0, "base_concept_acc": 0.9,
             "base_style_acc": 0.95, "base_oos_rate": {"church": 0.8}, "world_fid": 1.5, "pretrain_seconds": 60.0,
             "pretrain_hardware": "a CPU, 2 cores"}
    (metrics / "world.json").write_text(json.dumps(world))
    image = np.full((8, 16, 3), 200, dtype=np.uint8)
    for name in ("asr_retention.png", "context_budget.png", "ablate.png", "tradeoff.png", "relearn.png", "multi.png",
                 "erase_grid_church.png"):
        save_image(image, gen / name)
    params = read_yaml(REPO / "params.yaml") | {"paper": {"grids": ["church"]}}
    with (tmp_path / "params.yaml").open("w") as f:
        YAML(typ="safe", pure=True).dump(params, f)
    # The document and its bibliography copied, so the test compiles exactly what a reader would.
    for name in ("main.typ", "refs.bib"):
        shutil.copyfile(REPO / "paper" / name, tmp_path / name)
    (tmp_path / "frozen.yaml").write_text("tradeoff: {commits: [abc1234], dates: [2026-12-05]}\n")
    return {"source": tmp_path / "main.typ", "bibliography": tmp_path / "refs.bib", "erase_csv": metrics / "erase.csv",
            "world_json": metrics / "world.json", "generated_dir": gen, "params_path": tmp_path / "params.yaml",
            "grids": ["church"], "pdf": tmp_path / "out" / "main.pdf", "frozen_yaml": tmp_path / "frozen.yaml"}


def test_missing_inputs_are_all_named_with_the_command_that_makes_them(tmp_path):
    inputs = paper_inputs(tmp_path / "erase.csv", tmp_path / "world.json", tmp_path / "gen", tmp_path / "p.yaml",
                          ["church", "fish"], tmp_path / "frozen.yaml")
    (tmp_path / "world.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as info:
        check_inputs(inputs)
    message = str(info.value)
    for name in ("erase.csv", "ablate_table.csv", "transfer_table.csv", "matched_table.csv", "matched_verdict.csv",
                 "relearn_table.csv", "multi_curves.csv", "ours_table.csv", "asr_retention.png",
                 "context_budget.png", "ablate.png",
                 "tradeoff.png", "relearn.png", "multi.png", "frozen.yaml"):
        assert name in message
    assert "erase_grid_fish.png  (made by `dvc repro report`)" in message
    assert "world.json" not in message and "`dvc repro report`" in message


def test_paper_compiles_to_a_pdf(generated):
    pdf = build_paper(**generated)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and not list(pdf.parent.glob(".*tmp*"))
    assert build_paper(**generated).read_bytes() == data  # no timestamp: the same inputs, the same bytes


def test_missing_input_stops_the_build_before_compiling(generated):
    (generated["generated_dir"] / "transfer_table.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"transfer_table\.csv.*dvc repro report"):
        build_paper(**generated)
    assert not generated["pdf"].exists()


def test_bad_input_is_a_clear_error_and_leaves_no_pdf(generated):
    (generated["generated_dir"] / "ablate_table.csv").write_text("concept,method\nchurch,doco\n")
    with pytest.raises(ValueError, match=r"Typst could not compile the paper:\n.*error"):
        build_paper(**generated)
    assert not generated["pdf"].exists() and not list(generated["pdf"].parent.glob("*"))


def test_report_and_paper_stages_name_exactly_the_grids_it_shows():
    """dvc.yaml cannot loop over params in one stage's outs or deps, so the grids are listed by hand: the report
    writes, and the paper reads, params.yaml's paper.grids."""
    stages = read_yaml(REPO / "dvc.yaml")["stages"]
    deps = {d for d in stages["paper"]["deps"] if isinstance(d, str) and "erase_grid_" in d}
    outs = {next(iter(o)) for o in stages["report"]["outs"] if "erase_grid_" in next(iter(o))}
    want = {f"paper/generated/erase_grid_{f}.png" for f in read_yaml(REPO / "params.yaml")["paper"]["grids"]}
    assert deps == want and outs == want
