"""Typed, validated configuration: params.yaml (YAML 1.2) read into frozen dataclasses.

params.yaml is the one source of every value: no field has a default, so a missing section or key is
an error. To add a section: write a frozen `cdc.config.Checked` dataclass (ranges with `bounded`), then
add a field of that type to `Params` named as the params.yaml section (and the DVC stage). Field types:
bool, int, float, str, Literal[...], list[X], dict[str, X], X | None and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from cdc.attacks.config import ContextAttackConfig, InversionConfig, PrefixAttackConfig, RingABellConfig
from cdc.choices import Attention, Precision
from cdc.config import (
    Checked,
    EvaluateParams,
    JudgeParams,
    Phrases,
    ReportParams,
    SampleParams,
    bounded,
    check_names,
    check_steps,
)
from cdc.errors import ParamsError
from cdc.methods import known_methods, method_module
from cdc.methods.config import LoraGroup, LoraRunConfig

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
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"'{where}': expected {_type_name(tp)}, got {_describe(value)}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ParamsError(f"'{where}': expected a mapping with string keys, got {_describe(value)}")
        return {k: _convert(args[1], v, _key(where, k)) for k, v in value.items()}
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

    Unknown, missing and mistyped keys and values out of range raise ParamsError.
    """
    if not isinstance(data, Mapping):
        raise ParamsError(f"'{where or '<top level>'}': expected a mapping, got {_describe(data)}")
    if hasattr(cls, "from_mapping"):  # a section whose keys are not all fixed (erase: one key per method)
        return cls.from_mapping(data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        what = "key" if where else "section"
        raise ParamsError(f"unknown {what} '{_key(where, unknown[0])}' (known: {known})")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _key(where, name))
        else:
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

Style = Literal["twemoji", "openmoji"]
Method = str  # a method module of cdc.methods with its section erase.<method> (checked across sections)


@dataclass(frozen=True)
class WorldParams(Checked):
    """Build the emoji world: concepts present in every style, rendered small on white."""

    size: int = bounded(8)  # render size in pixels (square)
    styles: list[Style]
    n_concepts: int = bounded(1)  # target families + neighbours + a seeded sample of the other emoji
    min_concepts: int = bounded(1)  # fail the build if fewer concepts come out
    seed: int = bounded(0)
    caption_templates: list[str]  # "{a}" = phrase with its article ("a church"), "{p}" = bare phrase

    def __post_init__(self) -> None:
        """Distinct styles; every template names the phrase."""
        super().__post_init__()
        check_names("styles", self.styles)
        if not self.caption_templates or any("{a}" not in t and "{p}" not in t for t in self.caption_templates):
            raise ValueError("caption_templates must be non-empty and each must contain {a} or {p}")



@dataclass(frozen=True)
class PretrainParams(Checked):
    """Train the world text-to-image model (small UNet2DConditionModel on MiniLM context)."""

    steps: int = bounded(1)
    batch_size: int = bounded(1)
    lr: float = bounded(0, lo_open=True)  # peak AdamW learning rate after linear warm-up, cosine decay
    warmup_steps: int = bounded(0)
    block_channels: list[int] = bounded(1)  # UNet channels per level, top first
    cross_attention: list[bool]  # per level: whether it attends to the text
    layers_per_block: int = bounded(1)
    attention_head_dim: int = bounded(1)
    prediction_type: Literal["epsilon", "v_prediction"]
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    num_train_timesteps: int = bounded(1)
    ema_decay: float = bounded(0, 1, hi_open=True)
    caption_dropout: float = bounded(0, 1)  # probability of the empty prompt, for classifier-free guidance
    captions_per_image: int = bounded(1)  # training captions drawn per render from phrases x templates x styles
    max_length: int = bounded(1)  # MiniLM tokens per prompt (plus one sentence-embedding token)
    pooled_scale: float = bounded(0, lo_open=True)  # norm of the sentence-embedding token
    token_dropout: float = bounded(0, 1)  # probability that a caption keeps only its sentence token
    pooled_noise: float = bounded(0)  # norm of the noise added to the unit sentence embedding in training
    precision: Precision  # bf16 autocast (mixed precision) where the device has native bf16
    attention: Attention  # unfused on the CPU, fused SDPA on GPU (cdc.attention)
    seed: int = bounded(0)
    log_every: int = bounded(1)

    def __post_init__(self) -> None:
        """Reject inconsistent UNet shapes and a warm-up as long as training."""
        super().__post_init__()
        if not self.block_channels or len(self.cross_attention) != len(self.block_channels):
            raise ValueError(
                f"cross_attention has {len(self.cross_attention)} entries but block_channels "
                f"has {len(self.block_channels)} (need one per level, at least one level)"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")



@dataclass(frozen=True)
class BaseParams(Checked):
    """Judge the base model's images (in-set and out-of-set prompts)."""

    images_per_prompt: int = bounded(1)
    n_other_concepts: int = bounded(0)  # non-target concepts included in base_concept_acc
    seed: int = bounded(0)


@dataclass(frozen=True)
class AnchorsParams(Checked):
    """Base-model samples that an erasure trains on: anchor prompts (DoCo, CA) and target prompts (ESD)."""

    samples_per_prompt: int = bounded(1)  # seeded images per prompt
    phrases: Phrases  # all: every caption phrase of the family; names: names only; drawn: those the base model draws
    min_drawn: float = bounded(0, 1)  # phrases "drawn": keep a phrase drawn as the family at least this often
    style_probe: int = bounded(1)  # objects through which a style family is prompted
    seed: int = bounded(0)  # first sample seed; probe choice too


def method_configs(data: Mapping, where: str) -> dict[str, Any]:
    """Each key of `data` a method (cdc.methods.<key>), its value checked as that method's Config."""
    configs = {}
    for name, value in data.items():
        try:
            cls = method_module(name).Config
        except ValueError:
            raise ParamsError(f"unknown key '{_key(where, name)}': not a method "
                              f"(known: {', '.join(known_methods())})") from None
        configs[name] = from_dict(cls, value, _key(where, name))
    return configs


@dataclass(frozen=True)
class MethodSections:
    """A section holding one key per method, erase.<method>, each that method module's Config; read them as
    attributes (`params.erase.doco`) or with `config(method)`."""

    configs: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        """erase.<name>: the method's config."""
        configs = self.__dict__.get("configs", {})
        if name in configs:
            return configs[name]
        raise AttributeError(f"no section erase.{name} (methods with one: {', '.join(configs)})")

    def config(self, method: str) -> Any:
        """erase.<method>: the method's config, or ParamsError naming the methods that have one."""
        if method not in self.configs:
            raise ParamsError(f"no section 'erase.{method}' (methods with one: {', '.join(self.configs)})")
        return self.configs[method]

    @classmethod
    def from_mapping(cls, data: Mapping, where: str) -> MethodSections:
        """Every key of `data` as a method's section."""
        return cls(method_configs(data, where))


@dataclass(frozen=True)
class EraseLists(Checked):
    """The erase section's fixed keys."""

    concepts: list[str]  # world families (data/world/families.yaml), as slugs
    methods: list[Method]  # each has its section erase.<method>
    explain: list[str]  # families whose 06_erase notebooks also show each method up close (teaching only)


@dataclass(frozen=True)
class EraseParams(MethodSections):
    """One LoRA per (concept family, method); the families and methods are the DVC matrix of erase, evaluate and
    attack. Besides the lists, one key per method: erase.<method>, that method module's Config."""

    concepts: list[str]
    methods: list[Method]
    explain: list[str]

    def __post_init__(self) -> None:
        """Non-empty lists without repeats; every listed method has its section."""
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)
        bad = [c for c in self.concepts if not c or c != c.strip() or " " in c]
        if bad:
            raise ValueError(f"concepts are slugs without spaces (e.g. articulated-lorry), got {bad[0]!r}")
        unknown = [c for c in self.explain if c not in self.concepts]
        if unknown:
            raise ValueError(f"'erase.explain': {unknown[0]!r} is not in erase.concepts ({', '.join(self.concepts)})")
        if missing := [m for m in self.methods if m not in self.configs]:
            known = known_methods()
            what = f"has no section erase.{missing[0]}" if missing[0] in known else f"is not a method (known: " \
                f"{', '.join(known)})"
            raise ValueError(f"methods lists {missing[0]!r}, which {what}")

    @classmethod
    def from_mapping(cls, data: Mapping, where: str) -> EraseParams:
        """The lists (EraseLists), then every other key as a method's section."""
        fixed = [f.name for f in dataclasses.fields(EraseLists)]
        lists = from_dict(EraseLists, {k: v for k, v in data.items() if k in fixed}, where)
        configs = method_configs({k: v for k, v in data.items() if k not in fixed}, where)
        try:
            return cls(configs=configs, **{k: getattr(lists, k) for k in fixed})
        except ValueError as exc:
            raise ParamsError(f"'{where}': {exc}") from exc


@dataclass(frozen=True)
class AttackParams(Checked):
    """Attack every erased model (and the base model) on the same prompts and seeds."""

    prompts: int = bounded(1)  # in-set prompts attacked per family (a seeded subset of the training prompts)
    seed: int = bounded(0)  # prompt choice; image i of an attack is drawn with seed + i
    harmful: list[str]  # families attacked with harmful_k prefix tokens (the released k for nudity)
    harmful_k: int = bounded(1)
    images: int = bounded(1)  # fresh seeds per attacked prompt (prefix, Ring-A-Bell), none of them the attack's own
    prefix: PrefixAttackConfig  # the discrete prefix attack (UnlearnDiffAtk)
    inversion: InversionConfig  # concept inversion (CCE); start "concept": the family's own word
    style_templates: list[str]  # inversion templates for a style family (the object prompts name no style)
    inversion_images: int = bounded(1)  # seeds per inversion template at generation
    ringabell: RingABellConfig  # the black-box search over tokens (Ring-A-Bell), with the original encoder only
    context: ContextAttackConfig  # the white-box upper bound: a free context fitted through the erased UNet

    def __post_init__(self) -> None:
        """Every style template has the {} slot the learned word fills."""
        super().__post_init__()
        if bad := [t for t in self.style_templates if "{}" not in t]:
            raise ValueError(f"style_templates: {bad[0]!r} has no {{}} for the learned word")


@dataclass(frozen=True)
class ArmParams(Checked):
    """One ablation arm: a method of the erase section with some of its knobs changed."""

    method: Method
    set: str  # space-separated key=value overrides of erase.<method>, checked like params.yaml
    label: str  # what the arm changes, as the table and figure name it
    attack: bool  # also attack the arm as the attack stage does (the ASR columns)
    anchor: str | None  # None: the family's anchor; a world concept, or "" for the empty prompt (DoCo and CA)


@dataclass(frozen=True)
class AblateParams(Checked):
    """Ablations: each arm erased, evaluated (and attacked) like the erase table's rows, on a few families."""

    concepts: list[str]  # world families whose erase-stage anchors (and erase rows) the arms reuse
    arms: dict[str, ArmParams]  # arm name (a slug: DVC stage ablate@<concept>-<arm>) -> arm

    def __post_init__(self) -> None:
        """Distinct families; arm names are slugs."""
        super().__post_init__()
        check_names("concepts", self.concepts)
        if not self.arms:
            raise ValueError("arms is empty")
        bad = [a for a in self.arms if not a.replace("_", "").isalnum() or not a.islower()]
        if bad:
            raise ValueError(f"arm names are lower-case slugs of letters, digits and _, got {bad[0]!r}")


@dataclass(frozen=True)
class TransferParams(Checked):
    """Plug-and-play: text encoders erased against the world UNet, used unchanged with a second UNet."""

    pretrain: str  # the second UNet's recipe: the pretrain section with these key=value overrides
    concepts: list[str]  # world families whose erased encoders are carried over
    methods: list[Method]  # methods that train the text encoder

    def __post_init__(self) -> None:
        """Distinct families and methods."""
        super().__post_init__()
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)


@dataclass(frozen=True)
class TradeoffParams(Checked):
    """Each method's erasure-retention curve, swept on the validation split, and its matched-erasure row."""

    concepts: list[str]  # world families whose erase-stage anchors the sweep reuses
    methods: list[Method]
    scales: list[float]  # training lengths: x each method's own updates (steps - warmup_steps); one run, snapshotted
    validation_seed: int = bounded(0)  # sample.seed and evaluate.seed of the validation split

    def __post_init__(self) -> None:
        """Distinct families and methods; positive, increasing scales."""
        super().__post_init__()
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)
        if not self.scales or any(not 0 < s <= 10 for s in self.scales) or self.scales != sorted(set(self.scales)):
            raise ValueError(f"scales must be increasing values in (0, 10], got {self.scales}")


@dataclass(frozen=True)
class RelearnParams(Checked):
    """Each erased model fine-tuned on images of its concept: after how many steps is the concept back?"""

    concepts: list[str]  # world families whose erase-stage anchors (pairs, base-model samples) the stage reuses
    methods: list[Method]  # each erased as erase.<method> says, then fine-tuned
    checkpoints: list[int]  # fine-tuning steps at which the concept's rates are judged; 0: the erased model
    returned: float = bounded(0, 1, lo_open=True)  # the concept is back once its in-set rate reaches this
    lr: float = bounded(0, lo_open=True)  # AdamW on the fine-tuning LoRA
    batch_size: int = bounded(1)
    lora_group: LoraGroup  # the layers the fine-tune adapts (the erasure is merged into the UNet first)
    lora_rank: int = bounded(1)
    max_grad_norm: float = bounded(0, lo_open=True)
    weight_decay: float = bounded(0)
    seed: int = bounded(0)  # LoRA init and every batch, noise and timestep draw

    def __post_init__(self) -> None:
        """Distinct families and methods; increasing checkpoints from 0 or more, the last above 0."""
        super().__post_init__()
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)
        check_steps("checkpoints", self.checkpoints)

    def run_config(self) -> LoraRunConfig:
        """The fine-tune as a LoRA run config (its length is the last checkpoint)."""
        return LoraRunConfig(steps=self.checkpoints[-1], lr=self.lr, batch_size=self.batch_size,
                             lora_group=self.lora_group, lora_rank=self.lora_rank, lora_alpha=None,
                             max_grad_norm=self.max_grad_norm, weight_decay=self.weight_decay, seed=self.seed,
                             log_every=1)


@dataclass(frozen=True)
class MultiParams(Checked):
    """Several world concepts erased in one run: erasure and retention against how many."""

    counts: list[int]  # sizes of the nested erased sets, increasing
    families: list[str]  # one-member object families erased first (with their anchors), then seeded concepts
    methods: list[Method]  # each trained once per count with erase.<method> unchanged
    seed: int = bounded(0)  # which other concepts, their anchors, and the first sample seed

    def __post_init__(self) -> None:
        """Distinct families and methods; increasing positive counts."""
        super().__post_init__()
        check_names("families", self.families)
        check_names("methods", self.methods)
        if not self.counts or self.counts[0] < 1 or any(b <= a for a, b in zip(self.counts, self.counts[1:])):
            raise ValueError(f"counts must be increasing numbers of concepts >= 1, got {self.counts}")



@dataclass(frozen=True)
class PaperParams(Checked):
    """The paper built from the report's files (paper/main.typ, compiled with Typst)."""

    grids: list[str]  # families of erase.concepts whose before/after grid the paper shows, in that order

    def __post_init__(self) -> None:
        """Distinct families."""
        super().__post_init__()
        check_names("grids", self.grids)


@dataclass(frozen=True)
class Params:
    """All of params.yaml; each field is one section."""

    world: WorldParams
    judge: JudgeParams
    pretrain: PretrainParams
    sample: SampleParams
    base: BaseParams
    anchors: AnchorsParams
    erase: EraseParams
    evaluate: EvaluateParams
    attack: AttackParams
    ablate: AblateParams
    transfer: TransferParams
    tradeoff: TradeoffParams
    relearn: RelearnParams
    multi: MultiParams
    report: ReportParams
    paper: PaperParams

    def __post_init__(self) -> None:
        """Cross-section rules: every ablation arm's overrides are knobs of its method, and the second UNet of
        the transfer stage is another recipe whose methods train the text encoder; the paper shows grids of erased
        families only (`cdc sweep` narrows paper.grids with erase.concepts). Which families the ablate and
        transfer stages use is not tied to erase.concepts: their stages need those families' anchors and the
        report needs their erase rows, and both say so."""
        for field in ("transfer.methods", "tradeoff.methods", "relearn.methods", "multi.methods"):
            section, key = field.split(".")
            if missing := [m for m in getattr(getattr(self, section), key) if m not in self.erase.configs]:
                raise ParamsError(f"'{field}': {missing[0]!r} has no section erase.{missing[0]} "
                                  f"(methods with one: {', '.join(self.erase.configs)})")
        for name, arm in self.ablate.arms.items():
            arm_config(self.erase, arm, f"ablate.arms.{name}")
        if self.tradeoff.validation_seed in (self.sample.seed, self.evaluate.seed):
            raise ParamsError(f"'tradeoff.validation_seed' {self.tradeoff.validation_seed} is a seed of the evaluation "
                              "split (sample.seed or evaluate.seed): choosing on it would tune on the test set")
        if unknown := [f for f in self.paper.grids if f not in self.erase.concepts]:
            raise ParamsError(f"'paper.grids': {unknown[0]!r} is not in erase.concepts, so it has no grid")
        transfer = self.transfer
        if not transfer.pretrain.strip():
            raise ParamsError("'transfer.pretrain' is empty: the second UNet must differ from the first")
        if with_overrides(self.pretrain, transfer.pretrain, "transfer.pretrain") == self.pretrain:
            raise ParamsError("'transfer.pretrain' changes nothing: the second UNet would be the first")
        modules = {m: getattr(self.erase.config(m), "module", "unet") for m in transfer.methods}
        if text_encoder := [m for m, module in modules.items() if module != "text_encoder"]:
            raise ParamsError(f"'transfer.methods': {text_encoder[0]!r} does not train the text encoder, so there "
                              "is nothing to carry to another UNet")


def arm_config(erase: EraseParams, arm: ArmParams, where: str = "ablate.arm") -> Any:
    """The method config an ablation arm trains with: erase.<method> with the arm's overrides (an arm that changes
    the anchor may change nothing else)."""
    if arm.method not in erase.configs:
        raise ParamsError(f"'{where}.method': {arm.method!r} has no section erase.{arm.method} "
                          f"(methods with one: {', '.join(erase.configs)})")
    reference = erase.config(arm.method)
    if arm.anchor is not None:
        if "anchor" not in method_module(arm.method).NEEDS:
            raise ParamsError(f"'{where}.anchor': {arm.method} learns from no anchor samples")
        return with_overrides(reference, arm.set, f"{where}.set") if arm.set.strip() else reference
    if not arm.set.strip():
        raise ParamsError(f"'{where}.set' is empty: an arm must change something (the method's own row is the "
                          "reference)")
    return with_overrides(reference, arm.set, f"{where}.set")


# The world's concept families; a params file's family names are checked against it when it exists.
FAMILIES_FILE = Path(__file__).resolve().parents[2] / "data" / "world" / "families.yaml"
FAMILY_FIELDS = ["erase.concepts", "attack.harmful", "ablate.concepts", "transfer.concepts", "tradeoff.concepts",
                 "relearn.concepts"]  # erase.explain and paper.grids are checked against erase.concepts


def check_families(params: Params, families_file: str | os.PathLike[str] = FAMILIES_FILE) -> None:
    """ParamsError naming the first family-valued entry that is not a family of the world (as a slug)."""
    if not Path(families_file).is_file():
        return
    known = [name.replace(" ", "-") for name in read_yaml(families_file)["targets"]]
    for field in FAMILY_FIELDS:
        section, key = field.split(".")
        if unknown := [f for f in getattr(getattr(params, section), key) if f not in known]:
            raise ParamsError(f"'{field}': {unknown[0]!r} is not a family of the world (known: {', '.join(known)})")


def load_params(path: str | os.PathLike[str] = "params.yaml",
                families: str | os.PathLike[str] | None = FAMILIES_FILE) -> Params:
    """Read and validate the whole params file; its family names against `families` (None: not checked, for a
    file that names no world families, e.g. params_sd.yaml's paper concepts)."""
    try:
        params = from_dict(Params, read_yaml(path), where="")
        if families is not None:
            check_families(params, families)
        return params
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
