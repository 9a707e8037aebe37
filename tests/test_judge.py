"""Judge: augmentation, network shapes, training on a tiny synthetic world, save/load, predict."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cdc.augment import augment
from cdc.judge import JudgeNet, confusion, evaluate_judge, load_judge, predict, save_judge, train_judge


def tiny_world(n_concepts: int = 6, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coloured shapes on white: concept = colour (and shape), style 0 = filled, style 1 = dark outline + pale fill."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    r = (xx - size / 2) ** 2 + (yy - size / 2) ** 2
    box = np.maximum(np.abs(xx - size / 2), np.abs(yy - size / 2))
    diamond = np.abs(xx - size / 2) + np.abs(yy - size / 2)
    shapes = [r <= 10**2, box <= 9, diamond <= 12]  # circle, square, diamond
    colours = [(220, 40, 40), (40, 90, 220), (40, 180, 60), (240, 200, 30), (160, 60, 200), (30, 190, 200)]
    images, concepts, styles = [], [], []
    for c in range(n_concepts):
        mask = shapes[c % len(shapes)]
        col = np.array(colours[c % len(colours)])
        inner = np.zeros_like(mask)
        inner[2:-2, 2:-2] = mask[:-4, :-4] & mask[4:, 4:] & mask[:-4, 4:] & mask[4:, :-4]
        for s in range(2):
            img = np.full((size, size, 3), 255, dtype=np.uint8)
            if s == 0:
                img[mask] = col
            else:
                img[mask] = (20, 20, 20)  # outline ...
                img[inner] = (col + 255) // 2  # ... around a pale fill
            images.append(img)
            concepts.append(c)
            styles.append(s)
    return np.stack(images), np.array(concepts), np.array(styles)


@pytest.fixture(scope="module")
def trained(smoke_params) -> tuple[JudgeNet, list[dict[str, float]], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    data = tiny_world()
    cfg = dataclasses.replace(smoke_params.judge, steps=60, batch_size=32, lr=5e-3, width=16, seed=0, log_every=10)
    judge, history = train_judge(*data, cfg, progress=False)
    return judge, history, data


def test_augment_shape_range_and_seeding() -> None:
    x = torch.rand(5, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x)
    # strength 0 is the identity; the global RNG is never touched
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), strength=0.0), x)
    augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)


def test_augment_keeps_white_background_white_at_edges() -> None:
    # a white image shifted/zoomed must stay (nearly) white: fill is white, not black
    x = torch.ones(8, 3, 32, 32)
    y = augment(x, torch.Generator().manual_seed(0), strength=1.0)
    # brightness jitter and noise move it a little, never towards black
    assert y.mean() > 0.85


def test_augment_bad_input() -> None:
    with pytest.raises(ValueError, match="B,3,H,W"):
        augment(torch.rand(3, 32, 32), torch.Generator())
    with pytest.raises(ValueError, match="dtype"):
        augment(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.Generator())


def test_judgenet_shapes() -> None:
    net = JudgeNet(7, 2, width=8).eval()
    x = torch.rand(3, 3, 32, 32)
    logit_c, logit_s = net(x)
    assert logit_c.shape == (3, 7) and logit_s.shape == (3, 2)
    assert net.features(x).shape == (3, net.feature_dim) == (3, 32)


@pytest.mark.slow
def test_training_learns_and_is_deterministic(trained, smoke_params) -> None:  # noqa: ANN001
    judge, history, data = trained
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    acc = evaluate_judge(judge, *data, renders=4, seed=99)
    assert acc["concept_acc"] >= 0.9 and acc["style_acc"] >= 0.9
    small = dataclasses.replace(smoke_params.judge, steps=5, batch_size=16, width=8, seed=3, log_every=5)
    again, history2 = train_judge(*data, small, progress=False)
    again2, history3 = train_judge(*data, small, progress=False)
    assert history2[-1]["loss"] == history3[-1]["loss"]
    for p, q in zip(again.parameters(), again2.parameters()):
        assert torch.equal(p, q)


def test_train_bad_labels(smoke_params) -> None:  # noqa: ANN001
    images, concepts, styles = tiny_world(2)
    with pytest.raises(ValueError, match="labels"):
        train_judge(images, concepts[:-1], styles, dataclasses.replace(smoke_params.judge, steps=1), progress=False)
    with pytest.raises(ValueError, match="steps"):
        dataclasses.replace(smoke_params.judge, steps=0)


@pytest.mark.slow
def test_save_load_round_trip(trained, tmp_path: Path) -> None:  # noqa: ANN001
    judge, _, (images, _, _) = trained
    keys = [f"c{i}" for i in range(judge.n_concepts)]
    out = save_judge(judge, tmp_path / "judge", concept_keys=keys, style_names=["twemoji", "openmoji"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_judge(out)
    assert not loaded.training
    assert loaded.concept_keys == keys and loaded.style_names == ["twemoji", "openmoji"]
    a, b = predict(judge, images), predict(loaded, images)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_load_judge_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dvc repro judge"):
        load_judge(tmp_path / "nowhere")


@pytest.mark.slow
def test_predict_outputs_and_resize(trained) -> None:  # noqa: ANN001
    judge, _, (images, concepts, styles) = trained
    out = predict(judge, images)
    n = len(images)
    assert out["concept"].dtype == np.int64 and out["concept"].shape == (n,)
    assert out["style"].dtype == np.int64 and out["style"].shape == (n,)
    assert out["concept_conf"].dtype == np.float32 and out["style_conf"].dtype == np.float32
    assert out["concept_probs"].shape == (n, judge.n_concepts) and out["concept_probs"].dtype == np.float32
    np.testing.assert_allclose(out["concept_probs"].sum(1), 1.0, rtol=1e-5)
    assert (out["concept"] == concepts).mean() >= 0.9 and (out["style"] == styles).mean() >= 0.9
    # a 64x64 upscaled copy is judged after resizing back to 32x32
    big = images.repeat(2, axis=1).repeat(2, axis=2)
    assert (predict(judge, big)["concept"] == concepts).mean() >= 0.9
    with pytest.raises(ValueError, match="uint8"):
        predict(judge, images.astype(np.float32))
    m = confusion(out["concept"], concepts, judge.n_concepts)
    assert m.sum() == n and m.shape == (judge.n_concepts, judge.n_concepts)
