"""`cdc evaluate` and `cdc attack`: judge an erased model on a prompt CSV as the field does, and attack it.

Both read prompts in the UnlearnDiffAtk / I2P CSV format (one seed and guidance per prompt), draw one image per
prompt from the base model with an erasure applied (`--erased`: a LoRA folder or AdvUnlearn's text encoder
folder), and judge it with one of the field's judges (`cdc.cli.judges`), whose name, version and threshold every
output records. `cdc attack` runs the prefix attack (UnlearnDiffAtk) on each prompt the erased model does not
already draw, against the base model's image of that prompt, and reports the attack success rate.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np

from cdc.cli.erase import (
    DEFAULT_MODEL,
    DEFAULT_PARAMS,
    DTYPES,
    _choice,
    _quiet_libraries,
    add_model_flags,
    resolve_dtype,
)


def draw_rows(bundle: Any, rows: list[Any], cfg: Any, progress: bool) -> np.ndarray:
    """One image per CSV row with its own seed and guidance (rows without guidance use cfg's): uint8 (N, H, W, 3)."""
    from cdc.sampler import sample

    images: list[np.ndarray | None] = [None] * len(rows)
    for g in dict.fromkeys(cfg.guidance if r.guidance is None else r.guidance for r in rows):
        idx = [i for i, r in enumerate(rows) if (cfg.guidance if r.guidance is None else r.guidance) == g]
        drawn = sample(bundle, [rows[i].prompt for i in idx], [rows[i].seed for i in idx],
                       dataclasses.replace(cfg, guidance=g), progress=progress)
        for i, image in zip(idx, drawn, strict=True):
            images[i] = image
    return np.stack(images)


def _setup(args: argparse.Namespace) -> tuple[Any, ...]:
    """Every cheap check first (preset, dtype, CSV, judge, out folder, params), then the rows and settings."""
    from cdc.bundle import PRESETS
    from cdc.cli.common import check_erasure_files, check_out_dir
    from cdc.cli.judges import parse_judge
    from cdc.cli.prompt_csv import read_prompt_csv
    from cdc.cli.settings import load_command_params

    preset = _choice("--preset", args.preset, PRESETS)
    dtype_name = _choice("--dtype", args.dtype, DTYPES)
    rows = read_prompt_csv(args.prompts)
    if args.max_prompts is not None:
        if args.max_prompts < 1:
            raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
        rows = rows[: args.max_prompts]
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    if args.erased is not None and not Path(args.erased).is_dir():
        raise FileNotFoundError(f"--erased {args.erased} is not a folder (a LoRA or text encoder from `cdc erase`)")
    if args.erased is not None:
        check_erasure_files(args.erased, "--erased")  # a truncated weights file is named before any model loads
    params = load_command_params(Path(args.params) if args.params else DEFAULT_PARAMS[preset])
    cfg = params.sample if args.steps is None else dataclasses.replace(params.sample, steps=args.steps)
    judge = parse_judge(args.judge, args.world_dir)
    if args.quiet:
        _quiet_libraries()
    return preset, resolve_dtype(dtype_name, args.device), rows, out, params, cfg, judge


def _write(out: Path, images: np.ndarray, table: list[dict], summary: dict, replace: bool) -> None:
    """images/NNNN.png, results.csv (one row per prompt) and summary.json, atomically as one folder (replacing
    what is at `out` only with `replace`, i.e. --overwrite)."""
    from cdc.io import atomic_path, save_image, save_json, save_text

    with atomic_path(out, replace=replace) as tmp:
        tmp.mkdir(parents=True)
        for k, image in enumerate(images):
            save_image(image, tmp / "images" / f"{k:04d}.png")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        save_text(buf.getvalue(), tmp / "results.csv")
        save_json(summary, tmp / "summary.json")


def _rate(hits: np.ndarray, confidence: float) -> dict[str, float | int]:
    """A rate over judged images with its Wilson interval."""
    from cdc.targets import interval

    rate = float(np.mean(hits))
    lo, hi = interval(rate, len(hits), confidence)
    return {"rate": rate, "lo": lo, "hi": hi, "n": int(len(hits)), "confidence": confidence}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Draw one image per CSV prompt with the erasure applied, judge it, write the rate with its interval."""
    from cdc.bundle import load_bundle
    from cdc.erased import erased_model

    preset, dtype, rows, out, params, cfg, judge = _setup(args)
    bundle = load_bundle(preset, args.model or DEFAULT_MODEL[preset], device=args.device, dtype=dtype)
    with erased_model(bundle, args.erased, allow_other_base=args.allow_other_base) as model:
        images = draw_rows(model, rows, cfg, progress=not args.quiet)
    verdicts = judge(images)
    table = [{"file": f"images/{k:04d}.png", "prompt": r.prompt, "seed": r.seed,
              "guidance": cfg.guidance if r.guidance is None else r.guidance, "hit": bool(h), "score": float(s)}
             for k, (r, h, s) in enumerate(zip(rows, verdicts.hits, verdicts.scores, strict=True))]
    summary = {**_rate(verdicts.hits, params.report.confidence), "judge": verdicts.judge, "preset": preset,
               "model": str(args.model or DEFAULT_MODEL[preset]), "erased": args.erased, "prompts": str(args.prompts),
               "sample": dataclasses.asdict(cfg), "command": "cdc evaluate"}
    _write(out, images, table, summary, args.overwrite)
    if not args.quiet:
        s = summary
        print(f"{verdicts.judge['name']} sees the concept in {s['rate']:.2f} ({s['lo']:.2f}-{s['hi']:.2f}) of "
              f"{s['n']} images; wrote {out}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    """The prefix attack on every CSV prompt the erased model does not already draw; ASR with its interval."""
    from cdc.attacks.asr import attack_success_rate
    from cdc.attacks.prefix import prefix_attack
    from cdc.bundle import load_bundle
    from cdc.codec import encode_images
    from cdc.erased import erased_model

    preset, dtype, rows, out, params, cfg, judge = _setup(args)
    attack_cfg = params.attack.prefix
    flags = {k: v for k, v in {"k": args.k, "iterations": args.iterations, "seed": args.seed}.items() if v is not None}
    attack_cfg = dataclasses.replace(attack_cfg, **flags)
    bundle = load_bundle(preset, args.model or DEFAULT_MODEL[preset], device=args.device, dtype=dtype)
    base_images = draw_rows(bundle, rows, cfg, progress=not args.quiet)  # the attack's targets, and "base"
    base = judge(base_images)
    targets = encode_images(bundle.codec, base_images, bundle.device, bundle.dtype)  # (N, C, h, w)
    with erased_model(bundle, args.erased, allow_other_base=args.allow_other_base) as model:
        pre_images = draw_rows(model, rows, cfg, progress=False)
        pre = judge(pre_images)
        post_images, post_hits, post_scores, adversarial = pre_images.copy(), pre.hits.copy(), pre.scores.copy(), []
        for i, row in enumerate(rows):
            if pre.hits[i]:
                adversarial.append("")
                continue
            def drawn(prompt: str, row: Any = row) -> bool:
                image = draw_rows(model, [dataclasses.replace(row, prompt=prompt)], cfg, progress=False)
                return bool(judge(image).hits[0])

            result = prefix_attack(model, row.prompt, targets[i : i + 1], attack_cfg, stop=drawn)
            image = draw_rows(model, [dataclasses.replace(row, prompt=result.prompt)], cfg, progress=False)
            seen = judge(image)
            post_images[i], post_hits[i], post_scores[i] = image[0], seen.hits[0], seen.scores[0]
            adversarial.append(result.prompt)
            if not args.quiet:
                print(f"[{i + 1}/{len(rows)}] {'drawn' if seen.hits[0] else 'not drawn'}: {result.prompt!r}")
    asr = attack_success_rate(pre.hits, post_hits, base.hits, params.report.confidence)
    table = [{"file": f"images/{k:04d}.png", "prompt": r.prompt, "seed": r.seed, "base": bool(b), "pre": bool(p),
              "post": bool(q), "adversarial_prompt": a, "score": float(s)}
             for k, (r, b, p, q, a, s) in enumerate(zip(rows, base.hits, pre.hits, post_hits, adversarial,
                                                        post_scores, strict=True))]
    summary = {**asr.to_dict(), "judge": pre.judge, "attack": dataclasses.asdict(attack_cfg), "preset": preset,
               "model": str(args.model or DEFAULT_MODEL[preset]), "erased": args.erased, "prompts": str(args.prompts),
               "sample": dataclasses.asdict(cfg), "command": "cdc attack"}
    _write(out, post_images, table, summary, args.overwrite)
    if not args.quiet:
        told = "nothing to attack (the base model draws none of the prompts)" if asr.nothing_to_attack else \
            f"ASR {asr.asr:.2f} ({asr.asr_lo:.2f}-{asr.asr_hi:.2f}), pre-attack {asr.pre_asr:.2f}"
        print(f"{told} over {asr.n} prompts; wrote {out}")
    return 0


def _common(p: Any) -> None:
    """The flags `cdc evaluate` and `cdc attack` share."""
    add_model_flags(p)
    p.add_argument("--erased", default=None,
                   help="the erasure to apply: a LoRA folder or a text encoder folder from `cdc erase` "
                        "(default: none, the base model)")
    p.add_argument("--allow-other-base", action="store_true",
                   help="apply an erasure made for other base weights anyway (a warning says so)")
    p.add_argument("--prompts", required=True,
                   help="prompt CSV in the UnlearnDiffAtk / I2P format: prompt, evaluation_seed (or sd_seed, seed), "
                        "optionally evaluation_guidance (or sd_guidance, guidance)")
    p.add_argument("--max-prompts", type=int, default=None, help="only the first N rows (default: all)")
    p.add_argument("--judge", required=True,
                   help="nudenet[:THRESHOLD] (NudeNet 3.4.2, exposed classes, 0.45) | "
                        "classifier:MODEL_DIR:LABEL[,LABEL] (an ImageNet classifier folder of yours, top-1) | "
                        "clip:MODEL_DIR:CONCEPT:OTHER (CLIP zero-shot) | world:JUDGE_DIR:FAMILY")
    p.add_argument("--world-dir", default="data/world/built", help="the built world, for a world judge")
    p.add_argument("--params", default=None,
                   help="params file: its sample section (and attack.prefix for `cdc attack`) gives the defaults "
                        "(default: params.yaml for --preset world, params_sd.yaml for --preset sd)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: sample.steps)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on the CPU) | fp32 | bf16 | fp16")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def add_evaluate_parsers(sub: Any) -> None:
    """Add `cdc evaluate` and `cdc attack` to the `cdc` subparsers."""
    e = sub.add_parser("evaluate", help="judge an (erased) model on a prompt CSV: rate with its interval",
                       description="One image per CSV prompt (its seed and guidance), judged; writes images/, "
                                   "results.csv and summary.json (rate, Wilson interval, judge name, version and "
                                   "threshold).")
    _common(e)
    e.set_defaults(func=cmd_evaluate)
    a = sub.add_parser("attack", help="attack an erased model with prefix tokens (UnlearnDiffAtk): ASR",
                       description="For each CSV prompt the erased model does not draw, optimise prefix tokens "
                                   "against the base model's image of it; writes the adversarial prompts, their "
                                   "images and the attack success rate (pre-attack successes included).")
    _common(a)
    a.add_argument("--k", type=int, default=None, help="prefix tokens (default: attack.prefix.k; 5 for nudity)")
    a.add_argument("--iterations", type=int, default=None, help="Adam steps per round (default: attack.prefix)")
    a.add_argument("--seed", type=int, default=None, help="the attack's seed (default: attack.prefix.seed)")
    a.set_defaults(func=cmd_attack)
