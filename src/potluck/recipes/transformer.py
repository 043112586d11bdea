"""GPT- and BERT-style transformers in plain torch (their recipes: ``recipes/language.py``).

One stack serves both: token and position embeddings, pre-LayerNorm blocks (self-attention
through :func:`torch.nn.functional.scaled_dot_product_attention`, a 4x GELU MLP), a final
LayerNorm and an output layer tied to the token embedding. GPT attends causally (GPT-2's
layout, so the ``124M`` size at GPT-2's vocabulary and 1,024 positions has exactly GPT-2
small's 124,439,808 parameters); BERT attends both ways and adds BERT's masked-LM head
transform (dense, GELU, LayerNorm) and an output bias. No dropout: the output for a sample
depends on that sample only (see ``recipes/models.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Shape:
    """A transformer's size: blocks, model width, attention heads."""

    layers: int
    width: int
    heads: int


GPT_SIZES = {"tiny": Shape(4, 64, 4), "small": Shape(6, 320, 5), "124M": Shape(12, 768, 12)}
BERT_SIZES = {"tiny": Shape(4, 64, 4), "small": Shape(6, 320, 5), "base": Shape(12, 768, 12)}
DEFAULT_SIZE = "tiny"

GPT2_VOCAB = 50257
"""The vocabulary of GPT-2's tokenizer; ``124M`` uses it when the data set's is larger than
bytes (a word-level or BPE data set), and the data set's own for characters and bytes."""


def gpt_vocab(size: str, data_vocab: int) -> int:
    """Output vocabulary of a ``size`` GPT on a data set of ``data_vocab`` tokens."""
    if size == "124M" and data_vocab > 256:
        return max(GPT2_VOCAB, data_vocab)
    return data_vocab


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Token ids ``(N, T)`` -> logits ``(N, T, vocab)``, for ``T`` up to ``context``."""

    causal = True

    def __init__(self, vocab: int, context: int, shape: Shape) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab, shape.width)
        self.positions = nn.Embedding(context, shape.width)
        self.blocks = nn.ModuleList(Block(shape.width, shape.heads, self.causal)
                                    for _ in range(shape.layers))
        self.ln = nn.LayerNorm(shape.width)
        self.apply(self._init)
        for m in self.blocks.modules():  # GPT-2: residual outputs scaled down with depth
            if isinstance(m, Block):
                for proj in (m.attn.proj, m.mlp[-1]):
                    assert isinstance(proj, nn.Linear)
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * shape.layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens is longer than the context {self.context}")
        x = self.tokens(idx) + self.positions(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden(idx), self.tokens.weight)  # tied: no separate output matrix


class GPT(Transformer):
    """Decoder: position ``t`` sees tokens ``0..t`` and predicts token ``t + 1``."""

    causal = True


class BERT(Transformer):
    """Encoder: every position sees the whole sequence; predicts the tokens hidden by a mask."""

    causal = False

    def __init__(self, vocab: int, context: int, shape: Shape) -> None:
        super().__init__(vocab, context, shape)
        self.transform = nn.Sequential(nn.Linear(shape.width, shape.width),
                                       nn.GELU(approximate="tanh"), nn.LayerNorm(shape.width))
        self.transform.apply(self._init)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(self.hidden(idx)), self.tokens.weight, self.bias)
