"""The benchmark scripts run on the smoke params' tiny models in seconds and write the JSON they promise.

Each script is loaded from its file (no `sys.path` edits, as `python benchmarks/x.py` runs it); one of them
also runs as a real subprocess from the repository root.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cdc.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
KEPT = ("erase_speed", "erase_sweep", "evaluate_speed", "sd_speed", "stage_times")


def load_script(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module, loaded from its path."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def erase_speed() -> ModuleType:
    return load_script("erase_speed")


@pytest.fixture(scope="module")
def erase_sweep() -> ModuleType:
    return load_script("erase_sweep")


def test_one_script_per_question_and_none_edits_sys_path():
    assert sorted(p.stem for p in BENCHMARKS.glob("*.py")) == sorted(KEPT)
    for name in KEPT:
        assert "sys.path" not in (BENCHMARKS / f"{name}.py").read_text(), name


def test_erase_speed_prints_the_ratio_and_writes_json(erase_speed, smoke_params, smoke_params_path, tmp_path,
                                                      capsys):
    out_json = tmp_path / "out" / "speed.json"
    argv = ["--random-world", "--params", str(smoke_params_path), "--steps", "2", "--burn-in", "1",
            "--repeats", "1", "--threads", "1", "--full-erase", "--json", str(out_json)]
    result = erase_speed.main(argv)
    printed = capsys.readouterr().out

    assert result["weights"] == "random-world" and "RANDOM-WEIGHT" in printed and "random N(0,1)" in printed
    assert "ratio doco_step / plain_step_on_2B_rows =" in printed and "full DoCo erase" in printed
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert "rdc_step / doco_step =" in printed and result["ratio_rdc_vs_doco"] > 0  # RDC beside DoCo, same run
    # The floor adds the frozen forward to a 2B step, so it is above 1 (the measured ratio is noise at this size).
    assert result["floor_vs_plain_2b"] > 1 and math.isfinite(result["ratio_vs_plain_2b"])
    for name in erase_speed.VARIANTS:
        stats = result["results"][name]
        assert stats["n_steps"] == 2 and stats["median_s"] > 0 and stats["peak_rss_mb"] > 0
    doco = smoke_params.erase.doco
    # The run is the params file's erase.doco; the full erase is that section as it is.
    assert (result["batch_size"], result["lora_group"], result["surgery"]) == (doco.batch_size, doco.lora_group,
                                                                               doco.surgery)
    assert result["full_erase"]["config"] == dataclasses.asdict(doco) and result["full_erase"]["seconds"] > 0

    saved = json.loads(out_json.read_text())
    assert saved["ratio"] == pytest.approx(result["ratio"])
    assert saved["target_ratio_vs_plain_2b"] == erase_speed.TARGET_RATIO and saved["latent_shape"][0] == doco.batch_size


def test_erase_speed_command_line_overrides_the_params_file(erase_speed, smoke_params):
    doco = smoke_params.erase.doco
    assert erase_speed.run_config(erase_speed.parse_args(["--random-world"]), doco) == doco
    args = erase_speed.parse_args(["--random-world", "--batch-size", "3", "--surgery", "pcgrad", "--lora-rank", "2"])
    cfg = erase_speed.run_config(args, doco)
    assert (cfg.batch_size, cfg.surgery, cfg.lora_rank, cfg.lr) == (3, "pcgrad", 2, doco.lr)


def test_erase_speed_rejects_bad_arguments_and_a_missing_model(erase_speed, tmp_path):
    with pytest.raises(SystemExit):
        erase_speed.parse_args(["--random-world", "--steps", "0"])
    with pytest.raises(SystemExit):
        erase_speed.parse_args(["--model", str(tmp_path / "none")])


def test_overrides_are_checked_like_params_yaml(smoke_params):
    from cdc.errors import ParamsError
    from cdc.stages.params import with_overrides

    recipe = "steps=10 pooled_noise=0.25 block_channels=[32,32] cross_attention=[false,true]"
    cfg = with_overrides(smoke_params.pretrain, recipe, "pretrain")
    assert (cfg.steps, cfg.pooled_noise, cfg.block_channels) == (10, 0.25, [32, 32])
    assert with_overrides(cfg, "", "pretrain") == cfg
    with pytest.raises(ParamsError, match="pretrain.stepz"):
        with_overrides(cfg, "stepz=3", "pretrain")
    with pytest.raises(ParamsError, match="key=value"):
        with_overrides(cfg, "steps", "pretrain")
    doco = with_overrides(smoke_params.erase.doco, "surgery=pcgrad lr=1e-4", "erase.doco")
    assert (doco.surgery, doco.lr) == ("pcgrad", 1e-4)
    with pytest.raises(ParamsError, match="erase.doco.lr"):
        with_overrides(doco, "lr=fast", "erase.doco")


def test_evaluate_speed_checks_settings_and_folders_before_loading(smoke_params_path, tmp_path):
    evaluate_speed = load_script("evaluate_speed")
    argv = ["--params", str(smoke_params_path), "--data", str(tmp_path)]
    with pytest.raises(ParamsError, match="stepz"):
        evaluate_speed.main([*argv, "--setting", "stepz=10"])
    with pytest.raises(SystemExit, match="anchors/church does not exist"):
        evaluate_speed.main([*argv, "--setting", "steps=10"])
    with pytest.raises(SystemExit, match="--repeats must be >= 1"):
        evaluate_speed.main([*argv, "--repeats", "0"])
    # What a row samples: every rate's images plus world-FID's (capped at the renders), two UNet calls with guidance.
    row = {"in_set_n": 96, "out_of_set_n": 32, "retain_neighbors_n": 40, "retain_all_n": 48}
    assert evaluate_speed.images(row, 120, 1000) == 336 and evaluate_speed.images(row, None, 50) == 266
    assert evaluate_speed.unet_calls(20, 1.5) == 40 and evaluate_speed.unet_calls(10, 1.0) == 10


def test_erase_sweep_arms_apply_to_all_or_one_method(erase_sweep, smoke_params):
    from cdc.errors import ParamsError

    erase = smoke_params.erase
    both = erase_sweep.arm_configs(erase, "lr=2.0e-3 doco.surgery=pcgrad esd.steps=7", ["doco", "esd"])
    assert both["doco"].lr == both["esd"].lr == 2e-3
    assert both["doco"].surgery == "pcgrad" and both["esd"].steps == 7 and both["doco"].steps == erase.doco.steps
    assert erase_sweep.arm_configs(erase, "", ["ca"])["ca"] == erase.ca
    with pytest.raises(ValueError, match="not among"):
        erase_sweep.arm_configs(erase, "ca.steps=3", ["doco"])
    with pytest.raises(ParamsError, match="erase.esd.surgery"):
        erase_sweep.arm_configs(erase, "surgery=sum", ["doco", "esd"])


def test_erase_sweep_checks_overrides_before_loading_anything(erase_sweep, smoke_params_path, tmp_path):
    from cdc.errors import ParamsError

    argv = ["--params", str(smoke_params_path), "--data", str(tmp_path)]
    with pytest.raises(ParamsError, match="evaluate.sed"):
        erase_sweep.main([*argv, "--evaluate", "sed=778"])
    with pytest.raises(ParamsError, match="sample.seed"):
        erase_sweep.main([*argv, "--sample", "seed=one"])
    with pytest.raises(ParamsError, match="erase.doco.stepz"):
        erase_sweep.main([*argv, "--arm", "stepz=3"])
    with pytest.raises(SystemExit, match="anchors/church does not exist"):  # valid overrides reach the folders
        erase_sweep.main([*argv, "--evaluate", "seed=778", "--sample", "seed=1000", "--arm", "steps=3"])


def test_stage_times_sums_each_stage_from_the_executed_notebooks(tmp_path, capsys):
    import nbformat

    def executed(name: str, start: str, seconds: float) -> None:
        nb = nbformat.v4.new_notebook()
        nb.metadata["papermill"] = {"start_time": start, "duration": seconds}
        nbformat.write(nb, tmp_path / name)

    executed("06_erase_church_doco.ipynb", "2026-11-29T10:00:00+00:00", 90.0)
    executed("06_erase_fish_advunlearn_fast.ipynb", "2026-11-29T10:02:00+00:00", 30.0)
    executed("07_evaluate_church.ipynb", "2026-11-28T09:00:00+00:00", 600.0)
    (tmp_path / "notes.ipynb").write_text("{}")  # not a stage's notebook: ignored
    table = load_script("stage_times").main(["--executed", str(tmp_path)])
    assert [(r["stage"], r["runs"], r["total_min"], r["longest_min"]) for r in table] == [
        ("06_erase", 2, 2.0, 1.5), ("07_evaluate", 1, 10.0, 10.0)]
    assert [r["wall_min"] for r in table] == [2.5, 10.0]  # 10:00 to 10:02:30: the gap between runs counts
    assert "all" in capsys.readouterr().out
    since = load_script("stage_times").main(["--executed", str(tmp_path), "--since", "2026-11-29T00:00:00+00:00"])
    assert [r["stage"] for r in since] == ["06_erase"]


def sweep_rows() -> list[dict]:
    def row(concept, method, arm="", in_set=0.0, nbr=1.0, every=1.0):
        # out-of-set is for the test split: a high one does not stop a row meeting its concept
        return {"concept": concept, "method": method, "arm": arm, "in_set": in_set, "out_of_set": 0.5,
                "retain_neighbors": nbr, "retain_all": every, "world_fid": 3.0}

    return [row("a", "base", in_set=0.9, every=0.96), row("b", "base", in_set=0.8),
            row("a", "doco", nbr=0.8), row("b", "doco"),  # params.yaml: meets b only
            row("a", "doco", "lam=2", every=0.92), row("b", "doco", "lam=2"),  # 0.92 >= 0.95 x 0.96: meets both
            row("a", "ca"), row("b", "ca", in_set=0.1),  # meets a only
            row("a", "ca", "prior_weight=2", nbr=0.5), row("b", "ca", "prior_weight=2")]  # meets b only: a tie


def test_erase_sweep_summary_adopts_an_arm_only_when_it_meets_more_concepts(erase_sweep, smoke_params, tmp_path,
                                                                           capsys):
    rows = sweep_rows()
    path = tmp_path / "val.json"
    path.write_text(json.dumps(rows))
    summary = erase_sweep.main(["--summary", str(path), "--params", str(REPO / "params.yaml")])
    assert summary["meets"]["doco"] == {"": ["b"], "lam=2": ["a", "b"]}
    assert summary["adopted"] == {"doco": "lam=2", "ca": ""}
    assert "adopts lam=2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--with-base"):
        erase_sweep.summarise([r for r in rows if r["method"] != "base"], smoke_params.report)


@pytest.mark.slow
def test_erase_sweep_summary_runs_as_a_script_from_the_repository_root(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps(sweep_rows()))
    out = tmp_path / "summary" / "summary.json"
    done = subprocess.run([sys.executable, "benchmarks/erase_sweep.py", "--summary", str(path), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "doco: params.yaml: 1/2, lam=2: 2/2 -> adopts lam=2" in done.stdout
    assert json.loads(out.read_text())["adopted"] == {"doco": "lam=2", "ca": ""}


@pytest.mark.slow
def test_sd_speed_times_every_method_on_a_tiny_sd_and_projects_a_concept(smoke_params_path, tmp_path, capsys):
    module = load_script("sd_speed")
    out_json = tmp_path / "out" / "sd.json"
    argv = ["--size", "tiny", "--device", "cpu", "--steps", "1", "--burn-in", "0", "--threads", "1",
            "--params", str(smoke_params_path), "--batch-size", "2", "--attack-steps", "2", "--json", str(out_json)]
    result = module.main(argv)
    printed = capsys.readouterr().out
    saved = json.loads(out_json.read_text())
    assert set(saved["results"]) == set(result["results"]) == set(module.METHODS)
    assert (saved["size"], saved["dtype"], saved["random_weights"]) == ("tiny", "bf16", True)
    for name, row in saved["results"].items():
        assert row["median_step_s"] > 0 and row["projected_minutes"] > 0 and row["peak_mb"] > 0, name
        assert row["recipe_steps"] == module.RECIPES[name][1] and name in printed
        assert (row["median_warmup_s"] > 0) == (module.RECIPES[name][0] > 0), name  # two-phase methods time both
        assert row["meets_goal"] is None  # tiny size answers no goal
    rows = saved["results"]
    assert rows["advunlearn"]["config"]["attack_steps"] == 2 and rows["advunlearn"]["config"]["attack_method"] == "pgd"
    assert rows["advunlearn-fast"]["config"]["attack_method"] == "fast_at" and rows["doco"]["batch_size"] == 2
    assert "min/concept" in printed and "full AdvUnlearn:" in printed and "NOTE: not SD v1.4 size" in printed
    with pytest.raises(SystemExit):
        module.parse_args(["--methods", "doco,nope"])
