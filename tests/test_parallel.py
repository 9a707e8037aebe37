"""Data-parallel erasure: the shard arithmetic, and `accelerate launch` with two CPU processes (gloo) training
the same LoRA or text encoder as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cdc.cli.main import main
from cdc.methods.parallel import SINGLE, Shard

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {"kinds": {"object": {"captions": ["a photo of {a}", "{a} in a field"]}},
             "retain": ["a photo of a dog", "a photo of a house"]}


def test_shard_takes_every_world_th_row_and_averages():
    two = Shard(rank=1, world=2, mean=lambda t: t * 10)  # a stand-in all-reduce
    (rows,) = two.rows(torch.arange(6))
    assert rows.tolist() == [1, 3, 5]
    assert [t.item() for t in two.average([torch.tensor(1.0)])] == [10.0]
    x = torch.arange(4)
    assert SINGLE.rows(x)[0] is x and SINGLE.average([x])[0] is x  # one process: nothing changes
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        two.check_batch(3)
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        Shard(rank=2, world=2, mean=lambda t: t)
    with pytest.raises(ValueError, match="needs `mean`"):
        Shard(rank=0, world=2)


def erase_args(folder: Path, params: Path, templates: Path, out: Path, method: str, *extra: str) -> list[str]:
    return ["erase", "--preset", "sd", "--model", str(folder), "--params", str(params), "--templates",
            str(templates), "--concept", "church", "--anchor", "house", "--method", method, "--steps", "3",
            "--batch-size", "2", "--samples-per-prompt", "1", "--device", "cpu", "--quiet", "--out", str(out),
            *extra]


def weights(out: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of an erasure folder: the LoRA, or the text encoder's weights."""
    name = "pytorch_lora_weights.safetensors" if (out / "pytorch_lora_weights.safetensors").exists() \
        else "model.safetensors"
    return load_file(out / name)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "extra"), [("esd", ()), ("doco", ("--set", "d_norm=instance warmup_steps=1")),
                                               ("advunlearn", ("--set", "warmup_steps=1 retain_batch=2"))])
def test_two_processes_train_what_one_does(method, extra, tiny_sd_folder, smoke_params_path, tmp_path):
    templates = tmp_path / "templates.yaml"
    templates.write_text(json.dumps(TEMPLATES))
    one, two = tmp_path / "one", tmp_path / "two"
    torch.set_num_threads(1)
    assert main(erase_args(tiny_sd_folder, smoke_params_path, templates, one, method, *extra)) == 0
    # accelerate's multi-process launcher (torchrun); without a GPU the processes train on the CPU over gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cdc.cli",
              *erase_args(tiny_sd_folder, smoke_params_path, templates, two, method, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((two / "cdc_config.json").read_text())["processes"] == 2
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    # What training changed: a LoRA's B matrices start at zero; a text encoder starts as the base model's.
    lora = "pytorch_lora_weights.safetensors" in {p.name for p in one.iterdir()}
    start = {k: torch.zeros_like(v) for k, v in a.items() if "lora_B" in k} if lora else \
        load_file(tiny_sd_folder / "text_encoder" / "model.safetensors")
    update = sum(float((a[k] - start[k]).pow(2).sum()) for k in start) ** 0.5
    gap = sum(float((b[k] - a[k]).pow(2).sum()) for k in start) ** 0.5
    assert update > 0, "nothing was trained"
    # The same update up to round-off (another summation order; Adam's 1/sqrt(v) magnifies it on weights whose
    # gradient is ~0, such as CLIP's key biases); training on the wrong rows or noise differs by ~1x the update.
    assert gap <= 0.02 * update, f"two processes' update differs from one's by {gap / update:.1%}"
