"""A character-level GPT job file, written the way a user would (see docs/jobfiles.md)."""

from pathlib import Path

import torch
from helpers import CharWindows  # a helper module beside the job file
from torch import nn
from torch.nn import functional as F

POTLUCK = {"global_batch": 24, "steps": 6, "lr": 0.05, "clip_grad_norm": 1.0}
TEXT = Path(__file__).with_name("corpus.txt")
BLOCK = 16


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, width: int = 32, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(BLOCK, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True, bias=False)
        # (no biases: a key bias gets a zero gradient, which Adam would turn into noise)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.blocks(self.tok(x) + self.pos[:t], mask=mask, is_causal=True)
        return self.head(h)


def dataset(ctx):
    return CharWindows(TEXT.read_text(), BLOCK)


def model(ctx):
    return TinyGPT(len(dataset(ctx).vocab))


def loss(model, batch, ctx):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def optimizer(params, ctx):
    return torch.optim.AdamW(params, lr=ctx.spec.optimizer.lr)


def scheduler(opt, ctx):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
