"""Text context from token embeddings (with gradients), the vocabulary table, and prefix-token insertion.

Works for any `TextEncoder`: a forward hook on the model's input-embedding module swaps its output
(the word/token embeddings, before position embeddings) for given ones, so BERT/MiniLM and CLIP run
the rest of their forward, and the encoder's own `_context`, unchanged. This is what the released
attacks do with a custom CLIP forward that takes `inputs_embeds` [Diffusion-MU-Attack@5a3e5d3:
src/tasks/utils/text_encoder.py; AdvUnlearn utils/text_encoder.py].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cdc.text import TextEncoder, Tokens


def token_table(text: TextEncoder) -> Tensor:
    """The vocabulary embedding table (V, D_tok) of the encoder (a view of its weights, no gradient)."""
    return text.model.get_input_embeddings().weight.detach()


def context_from_embeddings(text: TextEncoder, tokens: Tokens, embeds: Tensor) -> Tensor:
    """Context (B, L', D) from word embeddings `embeds` (B, L, D_tok) that replace those of `tokens`.

    Gradients flow to `embeds`; fed `token_table(text)[tokens.input_ids]` it equals `text._context(tokens)`.
    """
    module = text.model.get_input_embeddings()
    if embeds.shape[:2] != tokens.input_ids.shape:
        raise ValueError(f"embeddings {tuple(embeds.shape)} do not match tokens {tuple(tokens.input_ids.shape)}")

    def swap(_module: torch.nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        if output.shape != embeds.shape:  # the hook must only ever replace this one lookup
            raise RuntimeError(f"embedding lookup of shape {tuple(output.shape)}, expected {tuple(embeds.shape)}")
        return embeds.to(output.dtype)

    handle = module.register_forward_hook(swap)
    try:
        return text._context(tokens)
    finally:
        handle.remove()


def insert_prefix(text: TextEncoder, tokens: Tokens, prefix_ids: Sequence[int] | Tensor) -> Tokens:
    """Put k token ids right after the start token ([CLS] / SOT) of every row: (B, L) -> (B, L).

    The prompt's tokens shift right by k; when they no longer fit, the prompt is cut but the end token
    ([SEP] / EOT) is kept last, as the tokenizer truncates; pads use the tokenizer's pad id and the
    attention mask covers start + prefix + prompt + end. (The released `prefix_k` splices embeddings
    [sot, adv, prompt, eot...] and drops k trailing EOT/pad slots: the same sequence for CLIP.)
    """
    prefix = torch.as_tensor(prefix_ids, dtype=torch.long).reshape(-1).tolist()
    k = len(prefix)
    ids, mask = tokens.input_ids, tokens.attention_mask
    length = ids.shape[1]
    if k + 2 > length:
        raise ValueError(f"{k} prefix tokens do not fit in max_length {length} with start and end tokens")
    pad = text.tokenizer.pad_token_id
    rows, masks = [], []
    for row, m in zip(ids.tolist(), mask.tolist()):
        n = int(sum(m))  # start + prompt + end
        content = row[1 : n - 1][: length - 2 - k]
        new = [row[0], *prefix, *content, row[n - 1]]
        rows.append(new + [pad] * (length - len(new)))
        masks.append([1] * len(new) + [0] * (length - len(new)))
    as_tensor = lambda x: torch.tensor(x, dtype=ids.dtype, device=ids.device)  # noqa: E731
    return Tokens(as_tensor(rows), as_tensor(masks).to(mask.dtype))


def prefix_embeddings(table: Tensor, tokens: Tokens, prefix: Tensor) -> Tensor:
    """Word embeddings (B, L, D_tok) of `tokens` (made by `insert_prefix`) with positions 1..k replaced by
    `prefix`, (k, D_tok) for every row or (B, k, D_tok) per row; gradients flow to `prefix`."""
    base = table[tokens.input_ids]  # (B, L, D_tok)
    k = prefix.shape[-2]
    prefix = prefix.to(base.dtype).expand(base.shape[0], k, base.shape[-1])
    return torch.cat([base[:, :1], prefix, base[:, 1 + k :]], dim=1)


def candidate_ids(text: TextEncoder, vocabulary: str) -> Tensor:
    """Token ids the attack may use, (C,) int64 ascending; special tokens are never candidates.

    "all": every non-special token (the released attack searches the whole CLIP vocabulary).
    "roundtrip": only tokens whose decoded text tokenizes back to that one token, so the adversarial
    prompt text reproduces the optimised ids: drops WordPiece '##' continuations, BERT's [unusedN],
    and CLIP's word-internal BPE pieces (no '</w>').
    """
    if vocabulary not in ("all", "roundtrip"):
        raise ValueError(f"unknown vocabulary {vocabulary!r} (known: all, roundtrip)")
    tok = text.tokenizer
    n = min(int(token_table(text).shape[0]), len(tok))
    special = set(tok.all_special_ids)
    ids = [i for i in range(n) if i not in special]
    if vocabulary == "roundtrip":
        words = [token_text(text, i) for i in ids]
        again = tok(words, add_special_tokens=False)["input_ids"]
        ids = [i for i, w, a in zip(ids, words, again) if w and a == [i]]
    return torch.tensor(ids, dtype=torch.long)


def token_text(text: TextEncoder, token_id: int) -> str:
    """One token decoded to text, stripped (CLIP's '</w>' becomes a space, then goes)."""
    return text.tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False).strip()
