"""Command line: `cdc generate` (prompts -> PNGs + grid), `cdc judge` (folder of images -> CSV) and `cdc erase`
(a concept as text -> a LoRA folder; cdc/cli/erase.py)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cdc.cli.common import check_erasure_files, check_out_dir, read_prompts
from cdc.errors import CdcError

if typing.TYPE_CHECKING:
    from cdc.config import SampleParams

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
GENERATE_FILES = ("prompts.json", "grid.png")  # written by `generate` beside its images


def slugify(text: str, max_len: int = 40) -> str:
    """File-name-safe lowercase slug of a prompt."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


SAMPLER_FLAGS = ("steps", "guidance", "eta", "batch_size", "seed", "precision")
# Images one `cdc generate` call draws: it holds them all in memory and pastes them all into grid.png, so
# 2048 Stable Diffusion images (512 x 512 x 3 bytes each) take about 1.5 GiB as images and as much again as the grid.
MAX_GENERATE_IMAGES = 2048


def sampler_settings(args: argparse.Namespace) -> SampleParams:
    """The params file's `sample` section (the pipeline's sampler) with any sampler flags given on top."""
    from cdc.cli.prompt_csv import MAX_GUIDANCE, MAX_SEED
    from cdc.config import SampleParams
    from cdc.stages.params import load_sections

    cfg = load_sections(args.params, sample=SampleParams).sample
    flags = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    try:
        cfg = dataclasses.replace(cfg, **flags)
    except ValueError as e:  # range checks of SampleParams
        raise ValueError(f"sampler flag: {e}") from None
    if cfg.guidance > MAX_GUIDANCE:  # SampleParams has checked it is finite and >= 0
        raise ValueError(f"sampler flag: guidance must be <= {MAX_GUIDANCE:g} (SD's usual scale is 7.5), "
                         f"got {cfg.guidance:g}")
    if cfg.seed > MAX_SEED:
        raise ValueError(f"sampler flag: seed must be <= 2**63-1, got {cfg.seed}")
    return cfg


def check_image_count(n: int, prompts: Sequence[str], first_seed: int) -> None:
    """--n images for each prompt: at least 1, at most MAX_GENERATE_IMAGES in all, seeds within int64."""
    from cdc.cli.prompt_csv import MAX_SEED

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    total = n * len(prompts)
    if total > MAX_GENERATE_IMAGES:
        raise ValueError(f"--n {n} x {len(prompts)} prompt(s) is {total} images, over the {MAX_GENERATE_IMAGES} one "
                         "`cdc generate` call holds in memory and pastes into grid.png (at SD's 512 px, about 1.5 "
                         "GiB each way); use a smaller --n or split the prompts over several calls")
    if first_seed + n - 1 > MAX_SEED:
        raise ValueError(f"--seed {first_seed} with --n {n} runs past the largest seed, 2**63-1")


def cmd_generate(args: argparse.Namespace) -> int:
    """Sample n images per prompt (seeds seed..seed+n-1) into a new folder with a grid and an index."""
    from cdc.bundle import load_bundle
    from cdc.erased import erased_model
    from cdc.grid import make_grid
    from cdc.io import atomic_path, save_image, save_json
    from cdc.sampler import sample
    from cdc.system import resolve_precision

    prompts = read_prompts(args.prompt, args.prompts_file)
    cfg = sampler_settings(args)
    check_image_count(args.n, prompts, cfg.seed)
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    if args.lora:  # a UNet LoRA or AdvUnlearn's text encoder, checked whole before the model loads
        check_erasure_files(args.lora, "--lora")
    bundle = load_bundle(args.preset, args.model, device=args.device)
    all_prompts = [p for p in prompts for _ in range(args.n)]
    seeds = [cfg.seed + j for _ in prompts for j in range(args.n)]
    with erased_model(bundle, args.lora, allow_other_base=args.allow_other_base) as model:
        images = sample(model, all_prompts, seeds, cfg, progress=not args.quiet)
    records = []
    with atomic_path(out, replace=args.overwrite) as tmp:
        tmp.mkdir(parents=True)
        for k, (prompt, seed, image) in enumerate(zip(all_prompts, seeds, images, strict=True)):
            name = f"{k:04d}_{slugify(prompt)}_s{seed}.png"
            save_image(image, tmp / name)
            records.append({"file": name, "prompt": prompt, "seed": seed})
        labels = [f"s{s} {p}" for p, s in zip(all_prompts, seeds, strict=True)]
        save_image(make_grid(images, ncols=args.n, labels=labels), tmp / "grid.png")
        save_json(
            {
                "preset": args.preset,
                "model": str(args.model),
                "lora": str(args.lora) if args.lora else None,
                "sample": {**dataclasses.asdict(cfg), "precision": resolve_precision(cfg.precision, bundle.device)},
                "images": records,
            },
            tmp / "prompts.json",
        )
    if not args.quiet:
        print(f"wrote {len(records)} images and grid.png to {out}")
    return 0


def list_images(folder: Path) -> list[Path]:
    """Image files to judge: those listed by a `generate` prompts.json, else every non-hidden file."""
    from cdc.io import load_json

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    index = folder / "prompts.json"
    if index.is_file():
        files = [folder / r["file"] for r in load_json(index)["images"]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists {missing[0]}, which is not in {folder}")
    else:
        files = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
        for f in files:
            if f.is_dir() or f.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{f} is not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    if not files:
        raise ValueError(f"no images in {folder}")
    return files


def read_images(files: Sequence[Path], progress: bool = False) -> np.ndarray:
    """Decode images to uint8 (N, H, W, 3), transparency composited on white; one size for all."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    arrays = []
    for f in tqdm(files, desc="reading", unit="image", disable=not progress):
        try:
            with Image.open(f) as im:
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                arrays.append(np.asarray(Image.alpha_composite(white, im).convert("RGB")))
        except (UnidentifiedImageError, OSError):
            raise ValueError(f"{f} is not a readable image") from None
        except Image.DecompressionBombError:
            raise ValueError(f"{f} is too large to decode (over PIL's decompression-bomb limit)") from None
        if arrays[-1].shape != arrays[0].shape:
            size, first = arrays[-1].shape, arrays[0].shape
            raise ValueError(
                f"{f} is {size[1]}x{size[0]} but {files[0]} is {first[1]}x{first[0]}; judge one image size at a time"
            )
    return np.stack(arrays)


def cmd_judge(args: argparse.Namespace) -> int:
    """Classify every image of a folder: concept, style and their confidences, as CSV."""
    from cdc.io import atomic_path, check_output
    from cdc.judge import load_judge, predict

    if args.out:
        check_output(args.out, "file")
        if Path(args.out).exists() and not args.overwrite:
            raise FileExistsError(f"--out {args.out} exists (pass --overwrite to replace it)")
    files = list_images(Path(args.images))
    judge = load_judge(args.judge, device=args.device)
    images = read_images(files, progress=not args.quiet)
    pred = predict(judge, images)
    keys = getattr(judge, "concept_keys", None)
    styles = getattr(judge, "style_names", None)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "concept", "concept_conf", "style", "style_conf"])
    for i, f in enumerate(files):
        c, s = int(pred["concept"][i]), int(pred["style"][i])
        writer.writerow(
            [
                f.name,
                keys[c] if keys else c,
                f"{float(pred['concept_conf'][i]):.4f}",
                styles[s] if styles else s,
                f"{float(pred['style_conf'][i]):.4f}",
            ]
        )
    if args.out:
        with atomic_path(args.out, replace=args.overwrite) as tmp:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
        if not args.quiet:
            print(f"judged {len(files)} images -> {args.out}")
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `cdc` argument parser."""
    from cdc.choices import Precision
    from cdc.cli.erase import add_erase_parser
    from cdc.cli.evaluate import add_evaluate_parsers
    from cdc.cli.sweep import add_sweep_parser

    parser = argparse.ArgumentParser(
        prog="cdc", description="Concept erasure toolkit: erase, generate, judge, evaluate and attack.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images for prompts into a folder (PNGs, grid.png, prompts.json)")
    g.add_argument("--preset", default="world", help="model preset: world | sd (default world)")
    g.add_argument("--model", default="data/models/world", help="world model folder, or SD folder / hub id")
    g.add_argument("--lora", default=None,
                   help="the erasure to apply: a diffusers LoRA folder or .safetensors file for the UNet, or a text "
                        "encoder folder (with config.json) from `cdc erase --method advunlearn`")
    g.add_argument("--allow-other-base", action="store_true",
                   help="apply a cdc LoRA or text encoder even though it was trained on other base weights "
                        "(a warning says so)")
    g.add_argument("--params", default="params.yaml",
                   help="params file whose `sample` section sets the sampler (default params.yaml, the pipeline's)")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    g.add_argument("--prompts-file", default=None, help="text file, one prompt per line (# comments)")
    g.add_argument("--n", type=int, default=4,
                   help=f"images per prompt (seeds seed..seed+n-1); at most {MAX_GENERATE_IMAGES} images in all")
    g.add_argument("--seed", type=int, default=None, help="first seed (default: sample.seed)")
    g.add_argument("--steps", type=int, default=None, help="DDIM steps (default: sample.steps)")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance >= 0 (default: sample.guidance)")
    g.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1] (default: sample.eta)")
    g.add_argument("--batch-size", type=int, default=None, help="images per UNet batch (default: sample.batch_size)")
    g.add_argument("--precision", choices=typing.get_args(Precision), default=None,
                   help="UNet arithmetic: bf16 autocast where the hardware has it (auto), or forced "
                        "(default: sample.precision)")
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    g.add_argument("--out", required=True, help="output folder (must be new or empty)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    g.set_defaults(func=cmd_generate)

    j = sub.add_parser("judge", help="classify a folder of images (concept, style, confidences) as CSV")
    j.add_argument("--judge", default="data/models/judge", help="trained judge folder")
    j.add_argument("--images", required=True, help="folder of images (or a `cdc generate` output folder)")
    j.add_argument("--out", default=None, help="CSV to write (default: print to stdout)")
    j.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    j.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    j.add_argument("--quiet", action="store_true")
    j.set_defaults(func=cmd_judge)

    add_erase_parser(sub)
    add_evaluate_parsers(sub)
    add_sweep_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input prints one `cdc: error: ...` line and returns 2."""
    from cdc.system import resolve_device

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "device"):
            args.device = resolve_device(args.device)
        return int(args.func(args))
    except (CdcError, ValueError, OSError) as e:  # OSError: missing files, permissions, a full disk
        print(f"cdc {args.command}: error: {e}", file=sys.stderr)
        return 2

