"""The benchmark scripts run in-process on the tiny random world UNet and write valid JSON."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "erase_speed.py"


@pytest.fixture(scope="module")
def erase_speed():
    spec = importlib.util.spec_from_file_location("erase_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_prints_ratio_and_writes_json(erase_speed, tmp_path, capsys):
    out_json = tmp_path / "out" / "speed.json"
    argv = ["--tiny", "--steps", "2", "--burn-in", "1", "--repeats", "1", "--threads", "1"]
    result = erase_speed.main([*argv, "--full-erase", "--params", str(tmp_path / "none.yaml"), "--json", str(out_json)])
    printed = capsys.readouterr().out

    assert result["tiny"] and "TINY RANDOM" in printed and "random N(0,1)" in printed
    assert "ratio doco_step / plain_step =" in printed
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    for name in erase_speed.VARIANTS:
        stats = result["results"][name]
        assert stats["n_steps"] == 2 and stats["median_s"] > 0 and stats["peak_rss_mb"] > 0
    assert "skipped" in result["full_erase"]

    saved = json.loads(out_json.read_text())
    assert saved["ratio"] == pytest.approx(result["ratio"])
    assert saved["target_ratio"] == 1.5 and saved["batch_size"] == 8


def test_full_erase_reads_params_erase_section(erase_speed, tmp_path):
    base = erase_speed.DocoConfig()
    params = tmp_path / "params.yaml"
    params.write_text("world:\n  size: 32\n")
    assert erase_speed.erase_config(params, base)[0] is None
    params.write_text("erase:\n  doco:\n    steps: 40\n    warmup_steps: 10\n    lr: 1.0e-4\n")
    cfg, _ = erase_speed.erase_config(params, base)
    assert (cfg.steps, cfg.warmup_steps, cfg.lr) == (40, 10, 1e-4)
    params.write_text("erase:\n  doco:\n    stepz: 40\n")
    cfg, why = erase_speed.erase_config(params, base)
    assert cfg is None and "stepz" in why


def test_bad_arguments_are_rejected(erase_speed):
    with pytest.raises(SystemExit):
        erase_speed.parse_args(["--steps", "0"])


def test_overrides_are_checked_like_params_yaml():
    from cdc.errors import ParamsError
    from cdc.methods import DocoConfig
    from cdc.params import PretrainParams, with_overrides

    recipe = "steps=10 pooled_noise=0.25 block_channels=[32,32] cross_attention=[false,true]"
    cfg = with_overrides(PretrainParams(), recipe, "pretrain")
    assert (cfg.steps, cfg.pooled_noise, cfg.block_channels) == (10, 0.25, [32, 32])
    assert with_overrides(cfg, "", "pretrain") == cfg
    with pytest.raises(ParamsError, match="pretrain.stepz"):
        with_overrides(cfg, "stepz=3", "pretrain")
    with pytest.raises(ParamsError, match="key=value"):
        with_overrides(cfg, "steps", "pretrain")
    doco = with_overrides(DocoConfig(), "surgery=pcgrad lr=1e-4", "erase.doco")
    assert (doco.surgery, doco.lr) == ("pcgrad", 1e-4)
    with pytest.raises(ParamsError, match="erase.doco.lr"):
        with_overrides(doco, "lr=fast", "erase.doco")


def test_erase_sweep_arms_apply_to_all_or_one_method():
    spec = importlib.util.spec_from_file_location("erase_sweep", SCRIPT.parent / "erase_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from cdc.errors import ParamsError
    from cdc.params import EraseParams

    erase = EraseParams()
    both = module.arm_configs(erase, "lr=2.0e-3 doco.surgery=pcgrad esd.steps=7", ["doco", "esd"])
    assert both["doco"].lr == both["esd"].lr == 2e-3
    assert both["doco"].surgery == "pcgrad" and both["esd"].steps == 7 and both["doco"].steps == erase.doco.steps
    assert module.arm_configs(erase, "", ["ca"])["ca"] == erase.ca
    with pytest.raises(ValueError, match="not among"):
        module.arm_configs(erase, "ca.steps=3", ["doco"])
    with pytest.raises(ParamsError, match="erase.esd.surgery"):
        module.arm_configs(erase, "surgery=sum", ["doco", "esd"])


def test_erase_sweep_checks_evaluate_overrides_before_loading_anything(tmp_path):
    spec = importlib.util.spec_from_file_location("erase_sweep", SCRIPT.parent / "erase_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from cdc.errors import ParamsError

    with pytest.raises(ParamsError, match="evaluate.sed"):
        module.main(["--evaluate", "sed=778", "--data", str(tmp_path)])
    with pytest.raises(ParamsError, match="sample.seed"):
        module.main(["--sample", "seed=one", "--data", str(tmp_path)])
    with pytest.raises(FileNotFoundError):  # valid overrides get as far as the (missing) anchors
        module.main(["--evaluate", "seed=778", "--sample", "seed=1000", "--data", str(tmp_path)])


def test_sample_speed_compares_variants_on_the_same_images(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sample_speed", SCRIPT.parent / "sample_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out_json = tmp_path / "speed.json"
    result = module.main(["--tiny", "--images", "2", "--repeats", "1", "--threads", "1", "--json", str(out_json)])
    assert json.loads(out_json.read_text())["variants"].keys() == result["variants"].keys()
    rows = result["variants"]
    assert rows["fp32"]["speedup"] == 1.0 and rows["fp32"]["max_pixel_diff"] == 0
    # Per-image seeding: batch size and memory order change kernels, not what is drawn.
    assert all(rows[k]["max_pixel_diff"] <= 8 for k in ("channels_last", "batch x2"))
    assert all(r["images_per_s"] > 0 and r["mean_pixel_diff"] < 10 for r in rows.values())
    assert "images/s" in capsys.readouterr().out


def test_sampler_settings_rows_follow_the_overrides(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sampler_settings", SCRIPT.parent / "sampler_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = tmp_path / "params.yaml"
    params.write_text("sample:\n  steps: 2\n  batch_size: 256\n  precision: fp32\n")
    argv = ["--tiny", "--params", str(params), "--images-per-prompt", "1", "--n-other", "2", "--fid-images", "8"]
    settings = ["--setting", "", "--setting", "guidance=1.0 eta=0.0"]
    result = module.main([*argv, *settings, "--json", str(tmp_path / "s.json")])
    rows = result["rows"]
    assert [r["sample"]["guidance"] for r in rows] == [1.5, 1.0] and rows[1]["sample"]["eta"] == 0.0
    assert all(r["precision"] == "fp32" and r["sample"]["steps"] == 2 for r in rows)
    for r in rows:  # every target family gets a rate, and the rates are rates
        assert set(r["base_oos_rate"]) == {"church", "articulated lorry", "parachute", "fish", "weapon", "openmoji"}
        assert all(0 <= v <= 1 for v in r["base_oos_rate"].values()) and r["world_fid"] >= 0
    assert json.loads((tmp_path / "s.json").read_text())["rows"][1]["setting"] == "guidance=1.0 eta=0.0"
    assert "out-of-set:" in capsys.readouterr().out
    from cdc.errors import ParamsError

    with pytest.raises(ParamsError, match="sample.guidanse"):
        module.main([*argv, "--setting", "guidanse=2"])


def test_sweep_summary_adopts_an_arm_only_when_it_meets_more_concepts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sweep_summary", SCRIPT.parent / "sweep_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def row(concept, method, arm="", in_set=0.0, nbr=1.0, every=1.0):
        # out-of-set is for the test split: a high one does not stop a row meeting its concept
        return {"concept": concept, "method": method, "arm": arm, "in_set": in_set, "out_of_set": 0.5,
                "retain_neighbors": nbr, "retain_all": every, "world_fid": 3.0}

    rows = [row("a", "base", in_set=0.9, every=0.96), row("b", "base", in_set=0.8),
            row("a", "doco", nbr=0.8), row("b", "doco"),  # params.yaml: meets b only
            row("a", "doco", "lam=2", every=0.92), row("b", "doco", "lam=2"),  # 0.92 >= 0.95 x 0.96: meets both
            row("a", "ca"), row("b", "ca", in_set=0.1),  # meets a only
            row("a", "ca", "prior_weight=2", nbr=0.5), row("b", "ca", "prior_weight=2")]  # meets b only: a tie
    path = tmp_path / "val.json"
    path.write_text(json.dumps(rows))
    summary = module.main([str(path), "--params", str(SCRIPT.parents[1] / "params.yaml")])
    assert summary["meets"]["doco"] == {"": ["b"], "lam=2": ["a", "b"]}
    assert summary["adopted"] == {"doco": "lam=2", "ca": ""}
    assert "adopts lam=2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--with-base"):
        module.summarise([r for r in rows if r["method"] != "base"])


def test_pretrain_speed_times_precisions_and_attention_kernels_on_the_pretrain_loop(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pretrain_speed", SCRIPT.parent / "pretrain_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out_json = tmp_path / "out" / "speed.json"
    result = module.main(["--tiny", "--steps", "2", "--burn-in", "1", "--repeats", "2", "--threads", "1",
                          "--json", str(out_json)])
    assert json.loads(out_json.read_text())["ratios_to_fp32"] == pytest.approx(result["ratios_to_fp32"])
    assert set(result["ratios_to_fp32"]) == {"bf16", "bf16 unfused"}
    for arm in ("fp32", "bf16", "bf16 unfused"):
        row = result["arms"][arm]
        assert len(row["seconds"]) == 4 and row["min_s"] <= row["median_s"] <= row["max_s"]
    assert result["arms"]["bf16 unfused"]["attention"] == "unfused"
    out = capsys.readouterr().out
    assert "ratio bf16 / fp32 =" in out and "ratio bf16 unfused / fp32 =" in out
    with pytest.raises(SystemExit):
        module.main(["--tiny", "--steps", "0"])
