"""params.yaml `ablate`: ablation arms, each a method of the erase section with some knobs changed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdc.config import Checked, check_names
from cdc.errors import ParamsError
from cdc.methods import method_module
from cdc.stages.params import with_overrides
from cdc.stages.sections.erase import EraseParams, Method


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
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = ("concepts",)
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


    def cross_check(self, loaded: Mapping[str, Any]) -> None:
        """Every arm's overrides are knobs of its method (when the erase section is loaded)."""
        if (erase := loaded.get("erase")) is not None:
            for name, arm in self.arms.items():
                arm_config(erase, arm, f"ablate.arms.{name}")

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
