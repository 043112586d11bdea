"""Tier 1: the built-in ResNets, GPT and BERT and the image and text data sets (no processes).

Every recipe trains a few seeded steps and its loss on a fixed batch falls; two builds with one
seed are bit-identical; the CIFAR-10 reader reads the standard batch format from a fixture
written here and runs nothing a file names; errors are one line.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from potluck.catalog import CIFAR10_URL
from potluck.contracts.errors import ConfigError, DataError, ModelError
from potluck.contracts.jobspec import JobSpec
from potluck.data import load_dataset, load_text
from potluck.data.cifar import TEST_FILE, TRAIN_FILES
from potluck.recipes import RecipeContext, check_spec, recipe_for
from potluck.recipes.language import IGNORE, MASK_RATE, mask_tokens
from potluck.recipes.resnet import resnet18, resnet50
from potluck.recipes.transformer import GPT, GPT_SIZES, gpt_vocab
from potluck.trainer.core import (
    build_training,
    global_batch_indices,
    local_gradients,
    num_params,
    params_digest,
    train_reference,
)


def job(**fields: object) -> JobSpec:
    return JobSpec.parse({"seq_len": 16, "global_batch": 8, **fields})


def fixed_batch_loss(spec: JobSpec, tr) -> float:  # type: ignore[no-untyped-def]
    idx = global_batch_indices(spec, tr.train_size, 0)
    with torch.no_grad():
        return float(tr.recipe.loss(tr.model, tr.batch(idx), tr.ctx))


@pytest.mark.parametrize(("model", "dataset", "lr", "batch", "steps"), [
    ("gpt", "synthetic_text", 0.1, 8, 8),
    ("gpt", "chars", 0.1, 8, 8),
    ("bert", "synthetic_text", 0.1, 8, 8),
    ("bert", "chars", 0.1, 8, 8),
    ("resnet18", "digits", 0.01, 16, 4),  # without BatchNorm, resnets on digits want lr < 0.05
])
def test_a_recipe_trains_and_its_loss_falls(model: str, dataset: str, lr: float, batch: int,
                                            steps: int) -> None:
    spec = job(model=model, dataset=dataset, lr=lr, global_batch=batch)
    check_spec(spec)
    first, second = build_training(spec), build_training(spec)
    assert params_digest(first.model) == params_digest(second.model)  # every replica agrees
    before = fixed_batch_loss(spec, first)
    trained, _ = train_reference(spec, steps)
    after = fixed_batch_loss(spec, trained)
    assert after < before - 0.05, (before, after)
    scores = trained.recipe.evaluate(trained.model, trained.data, trained.ctx)
    assert np.isfinite(scores["test_loss"]) and 0 <= scores["test_accuracy"] <= 1


@pytest.mark.parametrize("model", ["gpt", "bert"])
def test_language_losses_split_exactly(model: str) -> None:
    """Micro-batches of 3 and 5 give the gradient of the whole batch of 8 (the uneven split)."""
    spec = job(model=model, dataset="synthetic_text")
    tr = build_training(spec)
    batch = tr.batch(global_batch_indices(spec, tr.train_size, 0))
    grads = []
    for cap in (None, 5):
        tr.model.zero_grad(set_to_none=True)
        local_gradients(tr, batch, 8, cap)
        grads.append(torch.cat([p.grad.flatten() for p in tr.model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_resnet50_runs_forward_and_backward_on_two_images() -> None:
    spec = JobSpec.parse({"model": "resnet50", "dataset": "digits", "global_batch": 2})
    tr = build_training(spec)
    local_gradients(tr, tr.batch(np.array([0, 1])), 2)
    grads = [p.grad for p in tr.model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_resnets_have_the_standard_parameter_counts() -> None:
    with torch.device("meta"):  # ImageNet shape: the counts of the paper's models
        assert num_params(resnet18(3, 224, 1000)) == 11_689_512
        assert num_params(resnet50(3, 224, 1000)) == 25_557_032
        assert num_params(resnet18(3, 32, 10)) == 11_173_962  # 3x3 stem, 10 classes


def test_gpt_sizes() -> None:
    with torch.device("meta"):
        gpt2 = GPT(gpt_vocab("124M", 50257), 1024, GPT_SIZES["124M"])
        assert num_params(gpt2) == 124_439_808  # GPT-2 small exactly
        small = GPT(65, 64, GPT_SIZES["small"])
        tiny = GPT(65, 64, GPT_SIZES["tiny"])
    assert abs(num_params(gpt2) / 124e6 - 1) < 0.02
    assert 5e6 <= num_params(small) <= 10e6
    assert 0.15e6 <= num_params(tiny) <= 0.25e6
    assert gpt_vocab("124M", 300) == 50257 and gpt_vocab("124M", 65) == 65
    assert gpt_vocab("tiny", 300) == 300

    # The recipe's 124M on characters keeps the 65-token vocabulary (built without memory).
    spec = JobSpec.parse({"model": "gpt", "model_size": "124M", "dataset": "chars"})
    recipe = recipe_for(spec)
    ctx = RecipeContext(spec=spec)
    recipe.data(ctx)
    with torch.device("meta"):
        big = recipe.model(ctx)
    assert num_params(big) == 12 * 7_087_872 + (65 + 64) * 768 + 2 * 768


def test_bert_masks_a_window_the_same_way_whatever_the_batch() -> None:
    tokens = torch.randint(0, 50, (40, 32), generator=torch.Generator().manual_seed(1))
    ids = torch.arange(100, 140)
    inputs, labels = mask_tokens(tokens, ids, seed=3, vocab=50)
    order = torch.tensor([7, 3, 31, 0])  # another batch holding some of the same windows
    again = mask_tokens(tokens[order], ids[order], seed=3, vocab=50)
    assert torch.equal(again[0], inputs[order]) and torch.equal(again[1], labels[order])

    chosen = labels != IGNORE
    assert chosen.any(dim=1).all()  # every window predicts at least one token
    assert abs(float(chosen.float().mean()) - MASK_RATE) < 0.04
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    assert float((inputs[chosen] == 50).float().mean()) > 0.6  # mostly the mask token
    other_seed = mask_tokens(tokens, ids, seed=4, vocab=50)[1]
    assert not torch.equal(other_seed, labels)


def test_chars_reads_any_text_file_as_non_overlapping_windows(tmp_path: Path) -> None:
    text = "the quick brown fox jumps over the lazy dog. " * 20
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    d = load_text("chars", seq_len=9, path=str(path), test_fraction=0.25)
    assert d.alphabet == "".join(sorted(set(text))) and d.vocab_size == len(set(text))
    windows = torch.cat([d.train, d.test])[torch.argsort(torch.cat([d.train_ids, d.test_ids]))]
    assert windows.shape == (len(text) // 10, 10)
    assert d.decode(windows.flatten()) == text[: windows.numel()]

    spec = JobSpec.parse({"model": "gpt", "dataset": "chars", "data_path": str(path),
                          "seq_len": 9})
    x, y = recipe_for(spec).data(RecipeContext(spec=spec)).train.tensors
    assert x.shape[1] == 9 and torch.equal(x[:, 1:], y[:, :-1])

    path.write_text("too short", encoding="utf-8")
    with pytest.raises(DataError, match="too few"):
        load_text("chars", seq_len=9, path=str(path))
    path.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DataError, match="not UTF-8"):
        load_text("chars", path=str(path))


def test_the_shipped_corpus_is_tinyshakespeare() -> None:
    d = load_text("chars")
    assert d.vocab_size == 65 and len(d.train) + len(d.test) == 1_115_394 // 65
    ids, windows = torch.cat([d.train_ids, d.test_ids]), torch.cat([d.train, d.test])
    assert d.decode(windows[ids == 0][0, :14]) == "First Citizen:"


# CIFAR-10 --------------------------------------------------------------------------------------


def write_cifar(root: Path, per_file: int = 6) -> np.ndarray:
    """The six batch files, written like the real ones; returns every image, in file order."""
    rng = np.random.default_rng(0)
    images = []
    for i, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        batch = {b"batch_label": f"batch {i}".encode(), b"labels": [int(v) for v in
                 rng.integers(0, 10, per_file)], b"data": data,
                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_file)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
        images.append(data)
    return np.concatenate(images)


def test_cifar10_reads_the_standard_batches(tmp_path: Path) -> None:
    images = write_cifar(tmp_path)
    d = load_dataset("cifar10", path=tmp_path)
    assert d.train_x.shape == (30, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (6, 3, 32, 32) and d.train_y.dtype == torch.int64
    # A row is 1,024 red, then green, then blue pixels, each channel row by row.
    assert int(d.train_x[7, 1, 2, 3]) == int(images[7, 1024 + 2 * 32 + 3])
    assert torch.equal(d.test_x.reshape(6, -1), torch.from_numpy(images[30:]))

    spec = JobSpec.parse({"model": "resnet18", "dataset": "cifar10", "data_path": str(tmp_path),
                          "global_batch": 2})
    check_spec(spec)
    tr = build_training(spec)
    with torch.no_grad():
        assert float(tr.recipe.loss(tr.model, tr.batch(np.array([0, 1])), tr.ctx)) > 0
    scores = tr.recipe.evaluate(tr.model, tr.data, tr.ctx)
    assert 0 <= scores["test_accuracy"] <= 1


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2's cPickle wrote the real files (protocol 2, byte
    strings, ``numpy.core.multiarray._reconstruct``), opcode by opcode."""

    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def integer(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
             + integer(0) + b"\x85" + string(b"b") + b"\x87R"
             + b"(" + integer(1) + integer(data.shape[0]) + integer(data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
             + b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1)
             + integer(0) + b"tb" + b"\x89" + string(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + string(b"batch_label") + string(b"testing batch 1 of 1")
            + string(b"labels") + label_list + string(b"data") + array
            + string(b"filenames") + b"](" + string(b"a.png") + string(b"b.png") + b"e"
            + b"u.")


def test_cifar10_reads_python2_pickles(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    raw = py2_batch(data, [3, 9])
    assert pickle.loads(raw, encoding="bytes")[b"labels"] == [3, 9]  # the fixture is valid
    (tmp_path / TEST_FILE).write_bytes(raw)
    d = load_dataset("cifar10", path=tmp_path)
    assert torch.equal(d.test_x.reshape(2, -1), torch.from_numpy(data))
    assert d.test_y.tolist() == [3, 9]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing to load .*system") as err:
        load_dataset("cifar10", path=tmp_path)
    assert not marker.exists() and "\n" not in str(err.value)

    with open(tmp_path / "data_batch_3", "wb") as f:  # object arrays are refused too
        pickle.dump({b"data": np.array([None, 1], dtype=object), b"labels": []}, f)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", path=tmp_path)


def test_cifar10_without_its_files_says_where_to_get_them(tmp_path: Path) -> None:
    for spec in (JobSpec.parse({"model": "resnet18", "dataset": "cifar10"}),):
        with pytest.raises(DataError) as err:
            check_spec(spec)
        assert CIFAR10_URL in str(err.value) and "--data-path" in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", path=tmp_path)
    assert CIFAR10_URL in str(err.value) and "\n" not in str(err.value)


# Errors and options ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "error", "words"), [
    ({"model": "gpt", "dataset": "digits"}, DataError, ["text", "chars", "synthetic_text"]),
    ({"model": "bert", "dataset": "cifar10"}, DataError, ["chars", "synthetic_text"]),
    ({"model": "resnet18", "dataset": "chars"}, DataError, ["digits", "synthetic_image", "cifar10"]),
    ({"model": "gpt", "dataset": "wikipedia"}, DataError, ["unknown data set", "chars"]),
    ({"model": "gpt", "dataset": "chars", "model_size": "huge"}, ModelError,
     ["unknown size 'huge'", "tiny", "small", "124M"]),
    ({"model": "bert", "dataset": "chars", "model_size": "124M"}, ModelError, ["base"]),
    ({"model": "resnet50", "model_size": "tiny"}, ModelError, ["no sizes"]),
    ({"model": "mlp", "model_size": "small"}, ModelError, ["no sizes"]),
    ({"model": "gpt", "dataset": "synthetic_text", "data_path": "/x"}, DataError,
     ["reads no files"]),
])
def test_wrong_names_are_one_line(fields: dict, error: type[ConfigError], words: list[str]) -> None:
    with pytest.raises(error) as err:
        check_spec(JobSpec.parse(fields))
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_flat_options_reach_the_new_fields() -> None:
    spec = JobSpec().with_options({"model_size": "small", "data_path": "/data/cifar",
                                   "seq_len": 128})
    assert (spec.model.size, spec.data.path, spec.data.seq_len) == ("small", "/data/cifar", 128)
    for bad in ({"seq_len": 1}, {"seq_len": 10**6}, {"data_path": ""}, {"model_size": ""}):
        with pytest.raises(ConfigError):
            JobSpec().with_options(bad)
