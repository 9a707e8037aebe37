"""`cdc evaluate` and `cdc attack` on prompt CSVs, the field's judges (cdc.cli.judges) and the CSV reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdc.cli.judges import NUDENET_THRESHOLD, ClassifierJudge, NudeNetJudge, parse_judge
from cdc.cli.main import main
from cdc.cli.prompt_csv import read_prompt_csv
from cdc.io import load_json

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def church_csv(tmp_path) -> Path:
    """UnlearnDiffAtk's columns: prompt, evaluation_seed, evaluation_guidance (and others it ignores)."""
    return write_csv(tmp_path / "church.csv", "case_number,prompt,evaluation_seed,evaluation_guidance\n"
                     '0,"a church, twemoji style",3,1.5\n1,a chapel,4,1.0\n2,"a house, openmoji style",5,1.5\n')


def test_prompt_csv_rows_and_column_aliases(church_csv, tmp_path):
    rows = read_prompt_csv(church_csv)
    assert [(r.prompt, r.seed, r.guidance) for r in rows] == [("a church, twemoji style", 3, 1.5),
                                                              ("a chapel", 4, 1.0), ("a house, openmoji style", 5, 1.5)]
    i2p = read_prompt_csv(write_csv(tmp_path / "i2p.csv", "prompt,sd_seed,sd_guidance,nudity_percentage\nx,7,7.5,0\n"))
    assert (i2p[0].seed, i2p[0].guidance) == (7, 7.5)
    assert read_prompt_csv(write_csv(tmp_path / "plain.csv", "prompt,seed\nx,1\n"))[0].guidance is None


@pytest.mark.parametrize("text, message", [
    ("text,evaluation_seed\nx,1\n", "no prompt column"),
    ("prompt,guidance\nx,1\n", "no evaluation_seed / sd_seed / seed column"),
    ("prompt,seed\nx,one\n", r":2: seed 'one' is not an integer"),
    ("prompt,seed,guidance\nx,1,nan\n", r":2: guidance 'nan' is outside \[0, 100\]"),
    ("prompt,seed\n,1\n", r":2: the prompt is empty"),
    ("prompt,seed\n", "no prompts"),
])
def test_prompt_csv_rejects_bad_files(text, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        read_prompt_csv(write_csv(tmp_path / "bad.csv", text))


def test_nudenet_runs_offline_and_records_itself():
    judge = NudeNetJudge()
    assert judge.info["name"] == "nudenet" and judge.info["version"] == "3.4.2"
    assert judge.info["threshold"] == NUDENET_THRESHOLD and "FEMALE_BREAST_EXPOSED" in judge.info["counts"]
    rng = np.random.default_rng(0)
    images = np.stack([np.full((96, 96, 3), 235, np.uint8), rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)])
    images[0, 30:60, 30:60] = (200, 150, 120)  # a skin-coloured patch is not nudity
    verdicts = judge(images)
    assert verdicts.hits.tolist() == [False, False] and (verdicts.scores < NUDENET_THRESHOLD).all()


def test_classifier_judge_counts_its_labels(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=3,
                          id2label={0: "church, church building", 1: "boathouse", 2: "tench, Tinca tinca"},
                          label2id={"church, church building": 0, "boathouse": 1, "tench, Tinca tinca": 2})
    ResNetForImageClassification(config).save_pretrained(tmp_path / "resnet")
    # A ResNet-50 folder's processor (ConvNextImageProcessor) loads with the PIL backend: no torchvision needed.
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(tmp_path / "resnet")
    judge = ClassifierJudge(tmp_path / "resnet", ["church"])
    assert judge.ids == [0] and judge.info["counts"] == ["church, church building"]
    verdicts = judge(np.zeros((2, 32, 32, 3), np.uint8))
    assert verdicts.hits.dtype == bool and ((verdicts.scores >= 0) & (verdicts.scores <= 1)).all()
    with pytest.raises(ValueError, match="no class of .* is named parachute"):
        ClassifierJudge(tmp_path / "resnet", ["parachute"])


def test_judge_specs_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="image classifier weights not found"):
        parse_judge(f"classifier:{tmp_path / 'none'}:church")
    with pytest.raises(FileNotFoundError, match="CLIP weights not found"):
        parse_judge(f"clip:{tmp_path / 'none'}:church:house")
    with pytest.raises(ValueError, match="unknown judge 'q16'"):
        parse_judge("q16")
    with pytest.raises(ValueError, match="threshold must lie in"):
        parse_judge("nudenet:1.5")


def world_args(out: Path, csv: Path, *extra: str) -> list[str]:
    return ["--preset", "world", "--model", str(REPO / "data/models/world"), "--prompts", str(csv),
            "--judge", f"world:{REPO / 'data/models/judge'}:church", "--world-dir", str(REPO / "data/world/built"),
            "--steps", "4", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def test_evaluate_on_the_world_records_rate_and_judge(church_csv, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", *world_args(out, church_csv)]) == 0
    summary = load_json(out / "summary.json")
    assert summary["n"] == 3 and summary["lo"] <= summary["rate"] <= summary["hi"]
    assert summary["judge"]["name"] == "world" and summary["judge"]["counts"] == "church"
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == "file,prompt,seed,guidance,hit,score" and len(lines) == 4
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0000.png", "0001.png", "0002.png"]


@pytest.mark.slow
def test_attack_on_the_world_writes_asr(church_csv, tmp_path, smoke_params_path):
    out = tmp_path / "attack"
    assert main(["attack", *world_args(out, church_csv, "--params", str(smoke_params_path), "--k", "2")]) == 0
    summary = load_json(out / "summary.json")
    assert summary["n"] == 3 and summary["attack"]["k"] == 2 and summary["judge"]["name"] == "world"
    assert summary["nothing_to_attack"] or summary["asr"] >= summary["pre_asr"]
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == "file,prompt,seed,base,pre,post,adversarial_prompt,score"


def test_evaluate_on_tiny_sd_with_nudenet(tiny_sd_folder, smoke_params_path, tmp_path):
    csv = write_csv(tmp_path / "i2p.csv", "prompt,sd_seed,sd_guidance\na photo of a person,1,7.5\na beach,2,7.5\n")
    out = tmp_path / "sd"
    assert main(["evaluate", "--preset", "sd", "--model", str(tiny_sd_folder), "--params", str(smoke_params_path),
                 "--prompts", str(csv), "--judge", "nudenet", "--steps", "2", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    summary = load_json(out / "summary.json")
    assert summary["judge"]["name"] == "nudenet" and summary["n"] == 2 and summary["sample"]["steps"] == 2


def test_bad_input_is_one_line(church_csv, tmp_path, capsys):
    bad = write_csv(tmp_path / "bad.csv", "text,seed\nx,1\n")
    assert main(["evaluate", *world_args(tmp_path / "o1", bad)]) == 2
    assert "no prompt column" in capsys.readouterr().err
    assert main(["evaluate", *world_args(tmp_path / "o2", church_csv, "--erased", str(tmp_path / "nope"))]) == 2
    assert "is not a folder" in capsys.readouterr().err
    args = world_args(tmp_path / "o3", church_csv)
    args[args.index("--judge") + 1] = "q16"
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err
    assert "unknown judge 'q16'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


@pytest.mark.slow
def test_sweep_queues_one_dvc_experiment_per_pair(tmp_path, capsys):
    """`cdc sweep` in a clone of the repository: the queue holds one experiment per (concept, method)."""
    import os
    import subprocess

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--local", str(REPO), str(clone)], check=True)
    cwd = os.getcwd()
    os.chdir(clone)
    try:
        assert main(["sweep", "--concept", "church", "--concept", "fish", "--method", "doco", "--method",
                     "advunlearn_fast", "--dry-run"]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert printed[0] == ("dvc exp run --queue -n church-doco -S erase.concepts=[church] -S erase.methods=[doco] "
                              "-S paper.grids=[church] evaluate attack")
        assert len(printed) == 4
        assert main(["sweep", "--concept", "church", "--method", "doco", "--method", "esd"]) == 0
        assert "OMP_NUM_THREADS=" in capsys.readouterr().out  # each job gets its share of the cores
        status = subprocess.run(["dvc", "queue", "status"], capture_output=True, text=True, check=True).stdout
        assert "church-doco" in status and "church-esd" in status and status.count("Queued") == 2
        assert main(["sweep", "--concept", "atlantis"]) == 2
        assert "'atlantis' is not in" in capsys.readouterr().err
        assert main(["sweep", "--params", "params_sd.yaml", "--dry-run"]) == 2
        assert "read params.yaml only" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
