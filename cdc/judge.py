"""World judge: a small CNN that tells which concept and which style a 32x32 world image shows."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cdc.augment import augment
from cdc.config import JudgeParams

IMAGE_SIZE = 32
# Per-channel statistics of white-background emoji renders (mostly white); only used to centre inputs.
_MEAN = (0.80, 0.78, 0.75)
_STD = (0.30, 0.31, 0.33)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> GELU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()
    )


class _Stage(nn.Module):
    """Two 3x3 convs with a residual path; the first conv may downsample by 2."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv2(self.conv1(x)) + self.skip(x))


class JudgeNet(nn.Module):
    """CNN with concept and style heads over pooled features; input float (B,3,32,32) in [0,1]."""

    def __init__(self, n_concepts: int, n_styles: int, width: int = 64) -> None:
        super().__init__()
        if n_concepts < 1 or n_styles < 1 or width < 1:
            raise ValueError(f"JudgeNet needs n_concepts, n_styles, width >= 1, got {n_concepts}, {n_styles}, {width}")
        self.n_concepts, self.n_styles, self.width = n_concepts, n_styles, width
        self.feature_dim = 4 * width
        self.concept_keys: list[str] | None = None  # optional names, carried through save/load
        self.style_names: list[str] | None = None
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        # 32x32 (w/2) -> 32 (w) -> 16 (2w) -> 8 (4w) -> 4 (4w); the stem is narrow because 32x32 convs dominate cost
        self.body = nn.Sequential(
            _conv_bn(3, width // 2 or 1),
            _Stage(width // 2 or 1, width, 1),
            _Stage(width, 2 * width, 2),
            _Stage(2 * width, 4 * width, 2),
            _Stage(4 * width, 4 * width, 2),
        )
        self.concept_head = nn.Linear(self.feature_dim, n_concepts)
        self.style_head = nn.Linear(self.feature_dim, n_styles)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise all weights from `generator` (no global RNG), for reproducible training."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, 4*width) for float (B,3,32,32) in [0,1]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"JudgeNet expects (B,3,H,W) images, got shape {tuple(x.shape)}")
        h = self.body((x - self.mean) / self.std)  # (B, 4w, 4, 4)
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept_logits (B,C), style_logits (B,S)) for float (B,3,32,32) in [0,1]."""
        f = self.features(x)
        return self.concept_head(f), self.style_head(f)


def _to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) (RGBA composited on white, greyscale expanded) -> float (B,3,32,32) in [0,1]."""
    x = torch.as_tensor(np.asarray(images))
    if x.dim() == 3:  # greyscale (B,H,W)
        x = x.unsqueeze(-1).expand(*x.shape, 3)
    if x.dim() != 4 or x.shape[-1] not in (3, 4):
        raise ValueError(f"expected uint8 images (B,H,W,3), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (B,H,W,3), got dtype {x.dtype}")
    x = x.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] == 4:  # composite RGBA over white, as the world renders are
        alpha = x[:, 3:4]
        x = x[:, :3] * alpha + (1.0 - alpha)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).contiguous()


def _check_labels(images: np.ndarray, concepts: np.ndarray, styles: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate label arrays against the image batch and return them as int64 tensors."""
    c = torch.as_tensor(np.asarray(concepts), dtype=torch.long)
    s = torch.as_tensor(np.asarray(styles), dtype=torch.long)
    n = len(images)
    if n == 0:
        raise ValueError("judge needs at least one image")
    if c.shape != (n,) or s.shape != (n,):
        raise ValueError(f"labels must be (N,) with N={n} images, got concept {tuple(c.shape)}, style {tuple(s.shape)}")
    if c.min() < 0 or s.min() < 0:
        raise ValueError("concept and style labels must be >= 0")
    return c, s


def train_judge(
    images: np.ndarray,
    concepts: np.ndarray,
    styles: np.ndarray,
    cfg: JudgeParams,
    *,
    n_concepts: int | None = None,
    n_styles: int | None = None,
    progress: bool = True,
) -> tuple[JudgeNet, list[dict[str, float]]]:
    """Train a JudgeNet on uint8 renders (N,32,32,3) with on-the-fly augmentation; returns (judge, history)."""
    steps, batch_size, lr, seed, log_every = cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.log_every
    c_all, s_all = _check_labels(images, concepts, styles)
    x_all = _to_float(images)  # (N,3,32,32), small enough to keep in memory
    n_c = int(n_concepts if n_concepts is not None else c_all.max() + 1)
    n_s = int(n_styles if n_styles is not None else s_all.max() + 1)

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # default init draws from the global RNG; leave it untouched
        judge = JudgeNet(n_c, n_s, cfg.width)
    judge.reset_parameters(gen)  # the weights actually used come from the seeded generator
    judge.train()
    # no weight decay on norms and biases: they are few and decaying them only hurts calibration
    decay = [p for p in judge.parameters() if p.dim() > 1]
    no_decay = [p for p in judge.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)

    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="judge", unit="step")
    t0 = time.perf_counter()
    run = {"loss": 0.0, "loss_concept": 0.0, "loss_style": 0.0, "acc_concept": 0.0, "acc_style": 0.0}
    n_run = 0
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)  # with replacement
        x = augment(x_all[idx], gen, cfg.augment_strength)
        c, s = c_all[idx], s_all[idx]
        logit_c, logit_s = judge(x)
        loss_c = F.cross_entropy(logit_c, c, label_smoothing=cfg.label_smoothing)
        loss_s = F.cross_entropy(logit_s, s, label_smoothing=cfg.label_smoothing)
        loss = loss_c + loss_s
        if not torch.isfinite(loss):
            from cdc.errors import NaNLossError

            raise NaNLossError(f"judge training loss is {loss.item()} at step {step}; lower judge lr (now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

        run["loss"] += loss.item()
        run["loss_concept"] += loss_c.item()
        run["loss_style"] += loss_s.item()
        run["acc_concept"] += (logit_c.argmax(1) == c).float().mean().item()
        run["acc_style"] += (logit_s.argmax(1) == s).float().mean().item()
        n_run += 1
        if step % log_every == 0 or step == steps:
            row = {"step": step, **{k: v / n_run for k, v in run.items()}}
            row["lr"] = sched.get_last_lr()[0]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            run = dict.fromkeys(run, 0.0)
            n_run = 0
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc_c=f"{row['acc_concept']:.2f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    judge.eval()
    return judge, history


@torch.no_grad()
def _logits(judge: JudgeNet, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept and style logits of float (B,3,32,32) in eval mode, batched."""
    judge.eval()
    outs_c, outs_s = [], []
    for i in range(0, len(x), batch_size):
        lc, ls = judge(x[i : i + batch_size])
        outs_c.append(lc)
        outs_s.append(ls)
    return torch.cat(outs_c), torch.cat(outs_s)


def evaluate_judge(
    judge: JudgeNet,
    images: np.ndarray,
    concepts: np.ndarray,
    styles: np.ndarray,
    *,
    renders: int = 8,
    strength: float = 1.0,
    seed: int = 12345,
    batch_size: int = 256,
) -> dict[str, float]:
    """Accuracy on `renders` freshly augmented copies of every image (seed apart from training's)."""
    if renders < 1:
        raise ValueError(f"renders must be >= 1, got {renders}")
    c_all, s_all = _check_labels(images, concepts, styles)
    x_all = _to_float(images)
    gen = torch.Generator().manual_seed(seed)
    hit_c = hit_s = total = 0
    for _ in range(renders):
        for i in range(0, len(x_all), batch_size):
            x = augment(x_all[i : i + batch_size], gen, strength)
            lc, ls = _logits(judge, x, batch_size)
            hit_c += int((lc.argmax(1) == c_all[i : i + batch_size]).sum())
            hit_s += int((ls.argmax(1) == s_all[i : i + batch_size]).sum())
            total += len(x)
    return {"concept_acc": hit_c / total, "style_acc": hit_s / total}


def predict(judge: JudgeNet, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Judge uint8 images (B,H,W,3): argmax concept/style, their probabilities, and all concept probs."""
    x = _to_float(images)
    lc, ls = _logits(judge, x, batch_size)
    pc, ps = lc.softmax(1), ls.softmax(1)
    conf_c, arg_c = pc.max(1)
    conf_s, arg_s = ps.max(1)
    return {
        "concept": arg_c.numpy().astype(np.int64),
        "concept_conf": conf_c.numpy().astype(np.float32),
        "style": arg_s.numpy().astype(np.int64),
        "style_conf": conf_s.numpy().astype(np.float32),
        "concept_probs": pc.numpy().astype(np.float32),
    }


def confusion(pred: np.ndarray, true: np.ndarray, n: int) -> np.ndarray:
    """(n, n) int64 counts, rows = true class, columns = predicted class."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return m


def save_judge(
    judge: JudgeNet,
    path: str | Path,
    concept_keys: list[str] | None = None,
    style_names: list[str] | None = None,
) -> Path:
    """Write `path/` with model.safetensors and config.json atomically; returns the path."""
    from safetensors.torch import save_file

    from cdc.io import atomic_path

    keys = concept_keys if concept_keys is not None else judge.concept_keys
    names = style_names if style_names is not None else judge.style_names
    if keys is not None and len(keys) != judge.n_concepts:
        raise ValueError(f"{len(keys)} concept keys for a judge with {judge.n_concepts} concepts")
    if names is not None and len(names) != judge.n_styles:
        raise ValueError(f"{len(names)} style names for a judge with {judge.n_styles} styles")
    config: dict[str, Any] = {
        "n_concepts": judge.n_concepts,
        "n_styles": judge.n_styles,
        "width": judge.width,
        "concept_keys": list(keys) if keys is not None else None,
        "style_names": list(names) if names is not None else None,
    }
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> JudgeNet:
    """Load a judge written by save_judge, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"no trained judge at {path} (missing {name}); run `dvc repro judge` to train it"
            )
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
        judge = JudgeNet(int(config["n_concepts"]), int(config["n_styles"]), int(config["width"]))
        judge.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    except KeyError as e:
        raise ValueError(f"{path / CONFIG_NAME} lacks key {e}") from None
    except (ValueError, RuntimeError, OSError, SafetensorError) as e:  # corrupt JSON or weights, other shapes
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(f"judge at {path} could not be read: {first}") from None
    judge.concept_keys = config.get("concept_keys")
    judge.style_names = config.get("style_names")
    return judge.to(device).eval()


__all__ = ["JudgeNet", "train_judge", "evaluate_judge", "predict", "confusion", "save_judge", "load_judge"]
