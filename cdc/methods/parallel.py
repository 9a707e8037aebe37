"""Data-parallel training over processes (`accelerate launch`): every process draws the same full batch from the
same seeded generator, computes the loss on its own rows, and the gradients are averaged before the optimiser
step, which is then the same on every process. N processes so train the LoRA one process would, up to round-off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """This process's share of each batch (rows rank, rank + world, ...) and how gradients are averaged."""

    rank: int = 0
    world: int = 1
    mean: Callable[[Tensor], Tensor] | None = None  # average of a tensor over the processes (all-reduce)

    def __post_init__(self) -> None:
        """A rank inside the world, and a way to average where there is more than one process."""
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world} process(es)")
        if self.world > 1 and self.mean is None:
            raise ValueError("a shard of several processes needs `mean` to average gradients over them")

    def check_batch(self, batch_size: int, what: str = "batch_size") -> None:
        """Every process must get as many rows, or averaging the processes' mean losses is not the batch mean."""
        if batch_size % self.world:
            raise ValueError(f"{what} {batch_size} does not split evenly over {self.world} processes")

    def rows(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """This process's rows of each (B, ...) tensor: (B / world, ...)."""
        if self.world == 1:
            return tensors
        return tuple(x[self.rank::self.world] for x in tensors)

    def average(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Gradients (or losses) averaged over the processes; a single process gets them back unchanged."""
        if self.world == 1:
            return list(tensors)
        return [self.mean(t.contiguous()) for t in tensors]


SINGLE = Shard()


def accelerate_shard(accelerator: Any) -> Shard:
    """The shard of this process under Hugging Face accelerate (`accelerate launch`, any backend: NCCL, gloo)."""
    return Shard(rank=accelerator.process_index, world=accelerator.num_processes,
                 mean=lambda t: accelerator.reduce(t, reduction="mean"))
