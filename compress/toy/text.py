"""Toy text encoder: a word-level tokenizer and a frozen embedding table.

It stands in for T5 (PixArt-Σ, Flux) and CLIP's pooled vector (Flux). The weights come from a fixed
seed, are never trained, and ship next to the teachers (`weights/text_encoder.safetensors`), so the
same prompt always gives the same embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOCAB = ["<pad>", "<eos>", "<unk>", "a", "the", "handwritten", "digit", "number"]
VOCAB += [str(d) for d in range(10)] + WORDS
PAD, EOS, UNK = 0, 1, 2

MAX_TOKENS = 8  # L: every prompt is padded/truncated to this many tokens (EOS included)
TEXT_DIM = 64  # D_text: width of token embeddings and of the pooled vector
TEXT_SEED = 1234  # the frozen table is drawn from this seed


def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (ids (B, L) long, mask (B, L) long). Unknown words map to <unk>; EOS is always kept."""
    index = {word: i for i, word in enumerate(VOCAB)}
    ids = torch.full((len(prompts), MAX_TOKENS), PAD, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        words = [index.get(w, UNK) for w in prompt.lower().split()][: MAX_TOKENS - 1]
        tokens = words + [EOS]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, (ids != PAD).long()


class ToyTextEncoder(nn.Module):
    """Frozen: token + position embeddings (T5 stand-in) and a masked mean (pooled stand-in)."""

    def __init__(self, vocab_size: int = len(VOCAB), dim: int = TEXT_DIM, max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_tokens, dim))
        self.requires_grad_(False)

    @classmethod
    def from_seed(cls, seed: int = TEXT_SEED) -> "ToyTextEncoder":
        encoder = cls()
        gen = torch.Generator().manual_seed(seed)
        encoder.token_embedding.weight.copy_(torch.randn(encoder.token_embedding.weight.shape, generator=gen))
        encoder.position_embedding.copy_(0.3 * torch.randn(encoder.position_embedding.shape, generator=gen))
        encoder.token_embedding.weight[PAD].zero_()
        return encoder

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Returns prompt_embeds (B, L, D_text), attention_mask (B, L), pooled (B, D_text)."""
        ids, mask = tokenize(prompts)
        # position_embedding, not self.device (token_embedding's): under sequential CPU offload this
        # module's own hook has loaded position_embedding, token_embedding is `meta` until its call
        device = self.position_embedding.device
        ids, mask = ids.to(device), mask.to(device)
        embeds = self.token_embedding(ids) + self.position_embedding  # (B, L, D)
        embeds = embeds * mask[..., None]  # padding positions are exactly zero
        pooled = embeds.sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        return {"prompt_embeds": embeds, "attention_mask": mask, "pooled": pooled}

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype
