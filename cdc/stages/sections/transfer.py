"""params.yaml `transfer`: plug-and-play of erased text encoders on a second UNet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdc.config import Checked, check_names
from cdc.errors import ParamsError
from cdc.stages.params import with_overrides
from cdc.stages.sections.erase import Method, check_methods


@dataclass(frozen=True)
class TransferParams(Checked):
    """Plug-and-play: text encoders erased against the world UNet, used unchanged with a second UNet."""

    pretrain: str  # the second UNet's recipe: the pretrain section with these key=value overrides
    concepts: list[str]  # world families whose erased encoders are carried over
    methods: list[Method]  # methods that train the text encoder
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = ("concepts",)

    def __post_init__(self) -> None:
        """Distinct families and methods."""
        super().__post_init__()
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)

    def cross_check(self, loaded: Mapping[str, Any]) -> None:
        """The second UNet is another recipe than pretrain's, and every method has its erase section and trains the
        text encoder (the only part that can be carried to another UNet)."""
        check_methods("transfer.methods", self.methods, loaded)
        if not self.pretrain.strip():
            raise ParamsError("'transfer.pretrain' is empty: the second UNet must differ from the first")
        if (pretrain := loaded.get("pretrain")) is not None:
            if with_overrides(pretrain, self.pretrain, "transfer.pretrain") == pretrain:
                raise ParamsError("'transfer.pretrain' changes nothing: the second UNet would be the first")
        if (erase := loaded.get("erase")) is not None:
            modules = {m: getattr(erase.config(m), "module", "unet") for m in self.methods}
            if unet := [m for m, module in modules.items() if module != "text_encoder"]:
                raise ParamsError(f"'transfer.methods': {unet[0]!r} does not train the text encoder, so there is "
                                  "nothing to carry to another UNet")
