"""The built-in language models on the text data sets (``chars``, ``synthetic_text``).

``gpt`` predicts every next token of a window; ``bert`` predicts the tokens hidden by BERT's
masking. Both losses are a mean over the batch's samples of a per-sample mean over tokens,
which keeps the uneven split exact: a replica's share weighted by ``b_r / B`` sums to the
loss of the whole batch (a mean over all masked tokens of the batch would not, since windows
hide different numbers of tokens).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from potluck.catalog import check_model
from potluck.data import TextDataset, load_text
from potluck.recipes.base import (
    Batch,
    Recipe,
    RecipeContext,
    TensorData,
    TrainData,
    register_recipe,
)
from potluck.recipes.builtin import chunked_scores
from potluck.recipes.models import seeded
from potluck.recipes.transformer import (
    BERT,
    BERT_SIZES,
    DEFAULT_SIZE,
    GPT,
    GPT_SIZES,
    Shape,
    gpt_vocab,
)

MASK_RATE = 0.15
"""Fraction of a window's positions ``bert`` predicts (at least one per window)."""

IGNORE = -100
"""Label of a position that is not predicted (cross-entropy's ``ignore_index``)."""


class LanguageModel(Recipe):
    """Shared by ``gpt`` and ``bert``: the size table, the text, the evaluation."""

    sizes: dict[str, Shape] = {}
    eval_limit = 256
    """Test windows evaluated at the end (16k tokens at seq_len 64: minutes even for 124M on
    a CPU, where the replicas evaluate)."""
    _text: TextDataset | None = None
    _data: TrainData | None = None

    def check(self) -> None:
        check_model(self.spec)

    def shape(self) -> Shape:
        self.check()  # one line for an unknown size, even when nothing called check() first
        return self.sizes[self.spec.model.size or DEFAULT_SIZE]

    def text(self, ctx: RecipeContext) -> TextDataset:
        if self._text is None:
            d = ctx.spec.data
            self._text = load_text(d.name, seed=ctx.seed, test_fraction=d.test_fraction,
                                   seq_len=d.seq_len, path=d.path)
        return self._text

    def data(self, ctx: RecipeContext) -> TrainData:
        if self._data is None:
            self._data = self.samples(self.text(ctx), ctx)
        return self._data

    def samples(self, text: TextDataset, ctx: RecipeContext) -> TrainData:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TrainData, ctx: RecipeContext) -> dict[str, float]:
        """Per-token test loss and accuracy (next tokens for gpt, masked tokens for bert)."""
        if not isinstance(data.test, TensorData):  # data() builds tensors, or no test split
            return {}
        x, y = data.test.tensors
        return chunked_scores(model, x, y, self.eval_limit)


@register_recipe("gpt")
class GPTRecipe(LanguageModel):
    """Next-token prediction: ``x`` is a window's first ``seq_len`` tokens, ``y`` the last."""

    name = "gpt"
    sizes = GPT_SIZES

    def samples(self, text: TextDataset, ctx: RecipeContext) -> TrainData:
        def pairs(windows: torch.Tensor) -> TensorData:
            return TensorData(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())

        return TrainData(train=pairs(text.train), test=pairs(text.test),
                         input_shape=(ctx.spec.data.seq_len,), num_classes=text.vocab_size)

    def model(self, ctx: RecipeContext) -> nn.Module:
        shape, data = self.shape(), self.data(ctx)
        vocab = gpt_vocab(self.spec.model.size or DEFAULT_SIZE, data.num_classes)
        return seeded(ctx.seed, lambda: GPT(vocab, ctx.spec.data.seq_len, shape))

    def loss(self, model: nn.Module, batch: Batch, ctx: RecipeContext) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())  # every window: seq_len tokens


@register_recipe("bert")
class BERTRecipe(LanguageModel):
    """Masked-token prediction: ``x`` is a masked window of ``seq_len`` tokens, ``y`` holds the
    hidden tokens at the masked positions and :data:`IGNORE` elsewhere."""

    name = "bert"
    sizes = BERT_SIZES

    def samples(self, text: TextDataset, ctx: RecipeContext) -> TrainData:
        def masked(windows: torch.Tensor, ids: torch.Tensor) -> TensorData:
            return TensorData(*mask_tokens(windows[:, :-1], ids, ctx.seed, text.vocab_size))

        # One more token id than the text has: the mask token.
        return TrainData(train=masked(text.train, text.train_ids),
                         test=masked(text.test, text.test_ids),
                         input_shape=(ctx.spec.data.seq_len,), num_classes=text.vocab_size + 1)

    def model(self, ctx: RecipeContext) -> nn.Module:
        shape, data = self.shape(), self.data(ctx)
        return seeded(ctx.seed, lambda: BERT(data.num_classes, ctx.spec.data.seq_len, shape))

    def loss(self, model: nn.Module, batch: Batch, ctx: RecipeContext) -> torch.Tensor:
        x, y = batch
        per_token = F.cross_entropy(model(x).transpose(1, 2), y, ignore_index=IGNORE,
                                    reduction="none")  # (N, T), 0 where not masked
        return (per_token.sum(dim=1) / (y != IGNORE).sum(dim=1)).mean()


def mask_tokens(tokens: torch.Tensor, ids: torch.Tensor, seed: int, vocab: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of windows ``tokens`` (N, T), numbered ``ids`` (N,): returns the masked
    input and the labels.

    :data:`MASK_RATE` of the positions (at least one per window) are chosen; a chosen token
    becomes the mask token (id ``vocab``) with probability 0.8, a random token with 0.1, and
    stays with 0.1. Its label is the original token; other labels are :data:`IGNORE`. Every
    draw is a hash of ``(seed, window id, position)``, so a window is masked the same way on
    every replica, in every batch and every epoch, whatever else is in the batch.
    """
    n, t = tokens.shape
    ids_np = ids.cpu().numpy().astype(np.uint64)
    choose, kind, other = (_uniform(seed, stream, ids_np, t) for stream in range(3))
    chosen = (choose < MASK_RATE) | (choose == choose.min(axis=1, keepdims=True))
    inputs = tokens.cpu().numpy().copy()
    labels = np.where(chosen, inputs, IGNORE)
    inputs[chosen & (kind < 0.8)] = vocab
    swap = chosen & (kind >= 0.8) & (kind < 0.9)
    inputs[swap] = np.minimum((other[swap] * vocab).astype(np.int64), vocab - 1)
    return torch.from_numpy(inputs), torch.from_numpy(labels.astype(np.int64))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scrambles every bit."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, stream: int, ids: np.ndarray, length: int) -> np.ndarray:
    """Numbers in [0, 1), one per (window id, position), a function of those, seed and stream."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        key = _mix(np.array([seed], dtype=np.uint64))
        key = _mix(key ^ np.uint64(stream))
        rows = _mix(key ^ ids)[:, None]
        bits = _mix(rows ^ np.arange(length, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) / float(2**53)
