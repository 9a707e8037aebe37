"""Typed, validated configuration: params.yaml (YAML 1.2) read into frozen dataclasses.

To add a section: write a frozen dataclass with defaults, then add a field of that type to `Params`
whose name is the params.yaml section (and the DVC stage) name. Supported field types: bool, int,
float, str, Literal[...], list[X], tuple[X, ...], dict[str, X], X | None, and nested dataclasses.
A dataclass may validate values in `__post_init__` by raising ValueError.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from cdc.errors import ParamsError
from cdc.methods import CaConfig, DocoConfig, EsdConfig

# How the sampler runs the UNet: auto = bf16 autocast where the hardware has native bf16, else fp32.
Precision = Literal["auto", "fp32", "bf16"]
# Attention kernel in training: auto = unfused on the CPU (fused bf16 backward is slow there), else fused SDPA.
Attention = Literal["auto", "sdpa", "unfused"]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# YAML 1.2 reading (the parser DVC uses: `1e-5` is a float, `yes` is a string)


def _yaml() -> YAML:
    """A safe YAML 1.2 loader; pure Python so behaviour does not depend on the C extension."""
    return YAML(typ="safe", pure=True)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """Parse YAML 1.2 text; syntax errors and duplicate keys raise ParamsError naming `where`."""
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        # Drop ruamel's advice on switching the duplicate-key check off; name the file, not the stream.
        detail = str(exc).split("\n\nTo suppress")[0].replace('"<unicode string>"', f'"{where}"')
        raise ParamsError(f"{where}: invalid YAML: {detail}") from exc


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML 1.2 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    return parse_yaml(path.read_text(encoding="utf-8"), where=str(path))


# --------------------------------------------------------------------------------------------
# Generic dict -> frozen dataclass conversion


def _key(where: str, key: object) -> str:
    """Dotted name of `key` inside `where`."""
    return f"{where}.{key}" if where else str(key)


def _describe(value: Any) -> str:
    """Short 'type value' text for error messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and return it converted (nested dataclasses built)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except ParamsError as exc:
                errors.append(str(exc))
        if len(options) == 1:
            raise ParamsError(errors[0])
        raise ParamsError(f"'{where}': expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            choices = ", ".join(repr(a) for a in args)
            raise ParamsError(f"'{where}': expected one of {choices}, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"'{where}': expected {_type_name(tp)}, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ParamsError(
                    f"'{where}': expected {len(args)} items ({_type_name(tp)}), got {len(value)}"
                )
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"'{where}': expected a mapping ({_type_name(tp)}), got {_describe(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(key_tp, k, f"{where} key {k!r}"): _convert(val_tp, v, _key(where, k))
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"'{where}': expected bool (true/false), got {_describe(value)}")
        return value
    if tp is int:
        # bool is a subclass of int in Python, but `steps: true` is always a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{where}': expected int, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (write numbers unquoted, e.g. 1.0e-5)" if isinstance(value, str) else ""
            raise ParamsError(f"'{where}': expected float, got {_describe(value)}{hint}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"'{where}': expected str, got {_describe(value)}")
        return value
    raise TypeError(f"'{where}': unsupported field type {_type_name(tp)} in params dataclass")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the (frozen) dataclass `cls` from a mapping; `where` is the dotted key prefix for errors.

    Unknown keys, wrong types and missing keys without a default raise ParamsError.
    """
    if data is None:
        data = {}  # an empty section (`judge:` with nothing under it) means all defaults
    if not isinstance(data, Mapping):
        raise ParamsError(f"'{where or '<top level>'}': expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        what = "key" if where else "section"
        raise ParamsError(f"unknown {what} '{_key(where, unknown[0])}' (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _key(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"missing key '{_key(where, name)}'")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # range checks in __post_init__
        raise ParamsError(f"'{where or '<top level>'}': {exc}") from exc


def with_overrides(cfg: T, overrides: str, where: str) -> T:
    """`cfg` with space-separated 'key=value' pairs applied, checked as params.yaml is (unknown keys and
    wrong types are ParamsError); values are YAML 1.2, so 0.5, 1e-4, [64, 128] and true work."""
    data = dataclasses.asdict(cfg)
    for pair in overrides.split():
        key, sep, value = pair.partition("=")
        if not sep:
            raise ParamsError(f"override {pair!r} is not key=value")
        data[key] = parse_yaml(value, f"{where}.{key}")
    return from_dict(type(cfg), data, where)


# --------------------------------------------------------------------------------------------
# Sections (one per DVC stage, same name as the stage and its notebook)


@dataclass(frozen=True)
class WorldParams:
    """Build the emoji world: concepts present in every style, rendered small on white."""

    size: int = 32  # render size in pixels (square)
    styles: list[str] = field(default_factory=lambda: ["twemoji", "openmoji"])
    n_concepts: int = 330  # target families + neighbours + a seeded sample of the other emoji
    min_concepts: int = 300  # fail the build if fewer concepts come out
    seed: int = 0
    # "{a}" = phrase with its article ("a church"), "{p}" = bare phrase ("church")
    caption_templates: list[str] = field(default_factory=lambda: ["{a}", "{p}", "an emoji of {a}", "{p} icon"])


@dataclass(frozen=True)
class JudgeParams:
    """Train the concept/style classifier used to score generated images."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 64  # channels of the first conv block
    eval_renders: int = 8  # augmented held-out renders per image for the accuracy report
    seed: int = 0


@dataclass(frozen=True)
class PretrainParams:
    """Train the world text-to-image model (small UNet2DConditionModel on MiniLM context)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    block_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    cross_attention: list[bool] = field(default_factory=lambda: [False, True, True])  # per level
    layers_per_block: int = 1
    attention_head_dim: int = 8
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # probability of the empty prompt, for classifier-free guidance
    captions_per_image: int = 24  # training captions drawn per render from phrases x templates x styles
    max_length: int = 24  # MiniLM tokens per prompt (plus one sentence-embedding token)
    pooled_scale: float = 8.0  # norm of the sentence-embedding token, ~ the token states' norms
    token_dropout: float = 0.0  # probability that a caption keeps only its sentence token in training
    pooled_noise: float = 0.0  # norm of the noise added to the unit sentence embedding in training
    precision: Precision = "auto"  # bf16 autocast (mixed precision) where the device has native bf16
    attention: Attention = "auto"  # unfused on the CPU, fused SDPA on GPU (cdc.attention)
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        """Reject inconsistent UNet shapes early."""
        if len(self.cross_attention) != len(self.block_channels):
            raise ValueError(
                f"cross_attention has {len(self.cross_attention)} entries but block_channels "
                f"has {len(self.block_channels)}"
            )


@dataclass(frozen=True)
class SampleParams:
    """The sampler every later stage uses (DDIM with classifier-free guidance)."""

    steps: int = 20
    guidance: float = 1.5
    eta: float = 1.0  # 0 = deterministic DDIM, 1 = DDPM-like stochastic steps
    batch_size: int = 64
    seed: int = 0
    # UNet arithmetic while sampling a float32 model: "auto" = bf16 autocast where the hardware does bf16
    # natively (AVX512-BF16/AMX CPUs, CUDA compute >= 8), else fp32 (bf16 is 2x slower without it on AVX512
    # and 20x on AVX2: benchmarks/sample_speed.py). Stages record what "auto" resolved to.
    precision: Precision = "auto"


@dataclass(frozen=True)
class BaseParams:
    """Judge the base model's images (in-set and out-of-set prompts)."""

    images_per_prompt: int = 4
    n_other_concepts: int = 60  # non-target concepts included in base_concept_acc
    seed: int = 1234


PHRASES = ("all", "names", "drawn")  # anchors.phrases options; cdc.erase.erase_pairs builds each


@dataclass(frozen=True)
class AnchorsParams:
    """Base-model samples that an erasure trains on: anchor prompts (DoCo, CA) and target prompts (ESD)."""

    samples_per_prompt: int = 8  # seeded images per prompt
    phrases: str = "all"  # "all": train on every phrase of the concept in the world's captions; "names"
    min_drawn: float = 0.5  # phrases "drawn": keep a phrase whose base samples the judge sees as the family this often
    style_probe: int = 24  # objects through which a style family is prompted
    seed: int = 100  # first sample seed; probe choice too

    def __post_init__(self) -> None:
        """Reject an unknown phrases option before any sampling."""
        if self.phrases not in PHRASES:
            raise ValueError(f"phrases must be 'all', 'names' or 'drawn', got {self.phrases!r}")
        if not 0.0 <= self.min_drawn <= 1.0:
            raise ValueError(f"min_drawn must lie in [0, 1], got {self.min_drawn}")


@dataclass(frozen=True)
class EraseParams:
    """One LoRA per (concept family, method); the families are the DVC matrix of erase and evaluate."""

    concepts: list[str] = field(
        default_factory=lambda: ["church", "articulated-lorry", "parachute", "fish", "weapon", "openmoji"]
    )
    methods: list[str] = field(default_factory=lambda: ["doco", "esd", "ca"])
    doco: DocoConfig = field(default_factory=DocoConfig)
    esd: EsdConfig = field(default_factory=EsdConfig)
    ca: CaConfig = field(default_factory=CaConfig)


@dataclass(frozen=True)
class EvaluateParams:
    """Judge every erased model and the base model on the same prompts and seeds."""

    images_per_prompt: int = 4  # seeds per in-set and out-of-set prompt
    in_set_images: int = 96  # fewer seeds per in-set prompt where the family has many (at least 1 each)
    retain_images: int = 1  # seeds per (retained concept, style) prompt
    n_retain: int = 40  # retained concepts outside every family (retain_all)
    fid_images: int = 200  # generated images for world-FID (a fixed seeded subset of renders)
    seed: int = 777  # sampling seeds, apart from the anchors stage's


@dataclass(frozen=True)
class ReportParams:
    """What the report calls a successful erasure (issue 4's targets) and how sure its intervals are."""

    in_set_max: float = 0.05  # erased: the judge sees the family on its training prompts at most this often
    out_of_set_max: float = 0.15  # ... and on paraphrases never trained on
    neighbors_min: float = 0.9  # kept: retain_neighbors at least this x the base model's
    retain_all_min: float = 0.95  # kept: retain_all at least this x the base model's
    confidence: float = 0.95  # Wilson intervals on every rate (binomial over the judged images)

    def __post_init__(self) -> None:
        """Rates and factors lie in [0, 1]; a confidence of 0 or 1 gives no interval."""
        for name in ("in_set_max", "out_of_set_max", "neighbors_min", "retain_all_min"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")


@dataclass(frozen=True)
class Params:
    """All of params.yaml; each field is one section."""

    world: WorldParams = field(default_factory=WorldParams)
    judge: JudgeParams = field(default_factory=JudgeParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    sample: SampleParams = field(default_factory=SampleParams)
    base: BaseParams = field(default_factory=BaseParams)
    anchors: AnchorsParams = field(default_factory=AnchorsParams)
    erase: EraseParams = field(default_factory=EraseParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Read and validate the whole params file."""
    try:
        return from_dict(Params, read_yaml(path), where="")
    except ParamsError as exc:
        if str(exc).startswith(f"{path}: "):
            raise
        raise ParamsError(f"{path}: {exc}") from None


def load_section(name: str, path: str | os.PathLike[str] = "params.yaml") -> Any:
    """Read and validate the whole params file, then return one section's dataclass."""
    names = [f.name for f in dataclasses.fields(Params)]
    if name not in names:
        raise ParamsError(f"unknown params section '{name}' (known: {', '.join(names)})")
    return getattr(load_params(path), name)
