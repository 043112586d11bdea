import torch


class CharWindows:
    """Non-overlapping windows of ``block + 1`` characters: (input, next characters)."""

    def __init__(self, text: str, block: int) -> None:
        self.vocab = sorted(set(text))
        ids = torch.tensor([self.vocab.index(c) for c in text], dtype=torch.long)
        n = (len(ids) - 1) // block
        self.x = ids[: n * block].view(n, block)
        self.y = ids[1 : n * block + 1].view(n, block)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]
