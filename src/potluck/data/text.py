"""Built-in text data sets: fixed-length token windows for language models.

``chars``: a character-level corpus, by default Shakespeare's collected plays as shipped in
``data/files/tinyshakespeare.txt`` (1.1 MB, public domain); ``data.path`` names any UTF-8 text
file instead. The vocabulary is the sorted set of the text's characters.
``synthetic_text``: sequences from a seeded random order-2 Markov chain over 64 tokens, each
pair of tokens followed by one of a few likely tokens: structure a small model starts to learn
in a few steps (the loss falls from ln 64 = 4.16 towards the chain's entropy, ~1.1).

A sample is a window of ``seq_len + 1`` tokens (the last one is only a target). Windows do not
overlap, so the set is map-style: window ``i`` is always the same tokens and the replicas'
samplers address it by index like any other sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from potluck.catalog import TEXT_DATASETS
from potluck.contracts.errors import DataError

SYNTHETIC_VOCAB = 64
SYNTHETIC_TOKENS = 2**20
"""About this many tokens in ``synthetic_text`` (at least 64 and at most 4,096 windows)."""


@dataclass(frozen=True)
class TextDataset:
    """Windows of ``seq_len + 1`` tokens (int64), split into train and test."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_ids: torch.Tensor
    """Each training window's number in the corpus (stable across splits and seeds)."""
    test_ids: torch.Tensor
    vocab_size: int
    alphabet: str | None = None
    """``chars``: the character of each token id."""

    def decode(self, tokens: torch.Tensor) -> str:
        """The text of a 1-d token tensor (``chars`` only)."""
        if self.alphabet is None:
            raise DataError(f"data set {self.name!r} has no characters to decode to")
        return "".join(self.alphabet[int(t)] for t in tokens)


def read_corpus(path: str | Path | None = None) -> str:
    """The text of ``path``, or of the shipped tinyshakespeare corpus when None."""
    where = path or "the potluck package"
    try:
        if path is None:
            ref = resources.files("potluck.data").joinpath("files/tinyshakespeare.txt")
            return ref.read_text(encoding="utf-8")
        return Path(path).expanduser().read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text ({exc}): data.path must name a text "
                        "file") from exc
    except OSError as exc:
        fix = "reinstall potluck (`make install`)" if path is None else "check data.path"
        raise DataError(f"cannot read the chars corpus from {where} ({exc}): {fix}") from exc


def _chars(path: str | Path | None, seq_len: int) -> tuple[np.ndarray, int, str]:
    text = read_corpus(path)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    alphabet, tokens = np.unique(codes, return_inverse=True)  # sorted: ids follow code points
    n = len(tokens) // (seq_len + 1)
    if n < 2:
        raise DataError(f"{path or 'the corpus'} has {len(tokens)} characters, too few for two "
                        f"windows of data.seq_len {seq_len} + 1: use a longer text or a "
                        "smaller seq_len")
    windows = tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1).astype(np.int64)
    return windows, len(alphabet), "".join(map(chr, alphabet))


def _synthetic_text(seed: int, seq_len: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 15485863)
    vocab = SYNTHETIC_VOCAB
    # A hierarchical order-2 chain: token frequencies follow Zipf's law, each token has a
    # sparse distribution of successors around it (a Dirichlet draw), and each pair of tokens
    # a variation of its last token's (another draw). A model learns the frequencies first,
    # then pairs, then triples: the loss falls from ln 64 = 4.16 in a few steps and goes on
    # falling towards the chain's entropy (about 1.1 nats).
    zipf = 1.0 / np.arange(1, vocab + 1)
    zipf /= zipf.sum()
    first = _dirichlet(rng, np.broadcast_to(4.0 * zipf, (vocab, vocab)))
    second = _dirichlet(rng, np.broadcast_to(2.0 * first, (vocab, vocab, vocab)))
    cumulative = second.cumsum(axis=-1)
    n = min(4096, max(64, SYNTHETIC_TOKENS // (seq_len + 1)))
    tokens = np.empty((n, seq_len + 1), dtype=np.int64)
    tokens[:, :2] = rng.choice(vocab, size=(n, 2), p=zipf)
    for t in range(2, seq_len + 1):
        c = cumulative[tokens[:, t - 2], tokens[:, t - 1]]
        u = rng.random(n)[:, None]
        tokens[:, t] = np.minimum((u > c).sum(axis=1), vocab - 1)
    return tokens


def _dirichlet(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """One Dirichlet draw per row of ``alpha`` (the last axis), via normalised gamma draws."""
    g = rng.gamma(alpha + 1e-3)
    return g / g.sum(axis=-1, keepdims=True)


def load_text(name: str, *, seed: int = 0, test_fraction: float = 0.2, seq_len: int = 64,
              path: str | Path | None = None) -> TextDataset:
    """Load text data set ``name`` as windows of ``seq_len + 1`` tokens, split with ``seed``.

    Raises :class:`DataError` for unknown names and unreadable or too short files.
    """
    alphabet = None
    if name == "chars":
        windows, vocab, alphabet = _chars(path, seq_len)
    elif name == "synthetic_text":
        windows, vocab = _synthetic_text(seed, seq_len), SYNTHETIC_VOCAB
    else:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(TEXT_DATASETS)}")
    # The split is seeded independently of the training permutation (as for images).
    order = np.random.default_rng(seed + 104729).permutation(len(windows))
    n_test = min(len(windows) - 1, max(1, int(round(len(windows) * test_fraction))))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return TextDataset(
        name=name,
        train=torch.from_numpy(windows[train]), test=torch.from_numpy(windows[test]),
        train_ids=torch.from_numpy(train), test_ids=torch.from_numpy(test),
        vocab_size=vocab, alphabet=alphabet,
    )
