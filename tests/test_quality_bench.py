"""The quality benchmark's harness (benchmarks/quality/): data splits and report rendering.

The benchmark itself takes many minutes; these checks keep its harness from rotting:
calibration and evaluation data never overlap and are the same on every run, and the
tables render every kind of row (ran, spread over seeds, not available, failed).
"""

from __future__ import annotations

import pytest
import torch

# benchmarks/ is on the test path (pyproject's pythonpath).
from quality import data, report, runner
from quality.libs import COMPENSATIONS, NEW_CRITERIA, OURS, SHARED_CRITERIA, TORCH_PRUNING
from quality.section_digits import render as render_digits
from quality.section_lm import render as render_lm
from quality.section_minilm import render as render_minilm


@pytest.fixture(scope="module")
def some_files():
    """A slice of the standard library (the whole of it takes seconds to parse)."""
    files = data.stdlib_python_files()
    assert len(files) > 300 and not any("/test/" in f"/{f}" or f.startswith("test/") for f in files)
    return files[:80]


@pytest.fixture(scope="module")
def some_docstrings(some_files):
    return data.docstrings(some_files)


def test_sentence_split_is_disjoint_and_deterministic(some_docstrings):
    pool = data.prose_sentences(some_docstrings)
    assert len(pool) >= 60
    calibration, heldout = data.split_sentences(pool, 20, 40, seed=0)
    assert len(calibration) == 20 and len(heldout) == 40
    assert not set(calibration) & set(heldout)
    assert (calibration, heldout) == data.split_sentences(list(reversed(pool)), 20, 40, seed=0)
    assert data.split_sentences(pool, 20, 40, seed=1) != (calibration, heldout)
    for sentence in calibration + heldout:  # prose, not code
        assert sentence[0].isupper() and sentence.endswith(".") and "=" not in sentence and ">>>" not in sentence
    with pytest.raises(ValueError):
        data.split_sentences(pool, len(pool), 1)


def test_sentences_are_real_docstring_text(some_docstrings):
    texts = some_docstrings
    flat = " ".join(" ".join(t.split()) for t in texts)
    sentences = data.prose_sentences(texts)
    assert all(sentence in flat for sentence in sentences[:50])


def test_file_split_is_disjoint_deterministic_and_stable(some_files):
    train, heldout = data.file_split(some_files, 0.25)
    assert not set(train) & set(heldout) and sorted(train + heldout) == sorted(some_files)
    assert 0 < len(heldout) < len(some_files) // 2
    assert data.file_split(list(reversed(some_files)), 0.25) == (train, heldout)
    # Removing a file moves no other file across the split (it is decided per path).
    train_less, heldout_less = data.file_split(some_files[1:], 0.25)
    assert set(train_less) | set(heldout_less) == set(some_files[1:])
    assert set(heldout_less) == set(heldout) - {some_files[0]}


def test_windows_are_deterministic_and_evaluation_windows_disjoint():
    stream = torch.arange(10_000) % 251
    stream = stream.to(torch.uint8)
    even = data.even_windows(stream, 8, 300)
    starts = [int((stream[:-299].unfold(0, 300, 1) == w).all(1).nonzero()[0]) for w in even[:1]]
    assert starts == [0] and even.shape == (8, 300) and even.dtype == torch.int64
    assert torch.equal(data.random_windows(stream, 5, 64, seed=3), data.random_windows(stream, 5, 64, seed=3))
    assert not torch.equal(data.random_windows(stream, 5, 64, seed=3), data.random_windows(stream, 5, 64, seed=4))
    with pytest.raises(ValueError):
        data.even_windows(stream, 100, 300)


def test_digits_split_is_disjoint_and_deterministic():
    pytest.importorskip("sklearn")
    split = data.digits_split(seed=0)
    again = data.digits_split(seed=0)
    assert not set(split["train_index"].tolist()) & set(split["test_index"].tolist())
    assert len(split["train_index"]) + len(split["test_index"]) == 1797
    assert torch.equal(split["x_test"], again["x_test"]) and torch.equal(split["y_train"], again["y_train"])
    assert split["x_train"].shape[1:] == (1, 8, 8) and 0.0 <= float(split["x_train"].min()) <= 1.0
    assert sorted(set(split["y_test"].tolist())) == list(range(10))


def test_planned_rows_cover_every_configuration():
    rows = runner.plan_rows("minilm", [0.3, 0.5], random_seeds=3)
    ours = [r for r in rows if r["library"] == OURS]
    theirs = [r for r in rows if r["library"] == TORCH_PRUNING]
    criteria = len(SHARED_CRITERIA) + len(NEW_CRITERIA)
    assert len(ours) == (criteria + 2) * len(COMPENSATIONS) * 2  # random runs 3 seeds
    assert len(theirs) == (len(SHARED_CRITERIA) + 2) * 2 and {r["compensation"] for r in theirs} == {"none"}
    assert len({tuple(sorted(r.items())) for r in rows}) == len(rows)


def _row(library, criterion, compensation, ratio, status="ok", seed=0, **metrics):
    row = {"library": library, "criterion": criterion, "compensation": compensation, "ratio": ratio,
           "seed": seed, "status": status}
    if status == "ok":
        row.update(params_before=1000, params_after=700, **metrics)
    else:
        row["message"] = f"{status} message"
    return row


def test_minilm_table_renders_every_kind_of_row():
    results = [_row(OURS, "taylor", "none", r, cosine=0.8 - r / 10, nn_agreement=0.5) for r in (0.3, 0.5)]
    results += [_row(OURS, "random", "none", 0.3, seed=s, cosine=0.6 + s / 100, nn_agreement=0.4) for s in range(3)]
    results += [_row(OURS, "flap", "lstsq", 0.3, status="n/a"), _row(OURS, "flap", "lstsq", 0.5, status="n/a")]
    results += [_row(TORCH_PRUNING, "taylor", "none", 0.3, cosine=0.724, nn_agreement=0.6),
                _row(TORCH_PRUNING, "taylor", "none", 0.5, status="timeout")]
    table = report.aggregate(results)
    text = "\n".join(render_minilm(table, [0.3, 0.5], {}) + report.unavailable_summary(table)
                     + report.failure_notes(table))
    assert "| pruning_core | taylor | none | 30.0% (0.00 M) | 0.770 | 50.0% |" in text
    assert "0.610 ± 0.010 (3 seeds)" in text
    assert "| Torch-Pruning 1.6.1 | taylor | none |" in text and "timeout" in text
    assert "flap/lstsq" in text and "Not available" in text and "| flap |" not in text
    assert "mean cosine >= 0.85. pruning_core best: 0.770 (taylor/none)" in text and "**missed**" in text
    assert "both libraries leave exactly 700 parameters" in text


def test_digits_and_lm_tables_judge_their_targets():
    digits = report.aggregate([
        _row(OURS, "l1", "none", 0.5, accuracy=0.95, accuracy_ft=0.98, macs_fraction=0.5, pruning_ratio=0.3),
        _row(TORCH_PRUNING, "l1", "none", 0.5, accuracy=0.80, accuracy_ft=0.97, macs_fraction=0.49,
             pruning_ratio=0.28)])
    text = "\n".join(render_digits(digits, [0.5], {"dense_accuracy": 0.99}))
    assert "+15.0 points. **met**" in text and "| 95.0% | 98.0% |" in text
    lm = report.aggregate([_row(OURS, "l2", "none", 0.3, perplexity=5.5, increase=0.5),
                           _row(TORCH_PRUNING, "l2", "none", 0.3, perplexity=6.0, increase=1.0)])
    text = "\n".join(render_lm(lm, [0.3], {"dense_perplexity": 5.0}))
    assert "pruning_core best +0.500 (l2/none), Torch-Pruning best +1.000 (l2/none): ratio 0.50. **met**" in text
