"""Windows and batches: pure helpers of features.py (no model forward)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from qa_answer.features import Feature, Windowing, build_features, length_sorted_batches, pad_batch


def feature(length: int, row: int = 0) -> Feature:
    ids = np.arange(1, length + 1, dtype=np.int64)
    zeros = np.zeros(length, dtype=np.int64)
    return Feature(row, ids, zeros, zeros.astype(bool), np.zeros((length, 2), np.int64), zeros, zeros)


@pytest.mark.parametrize(
    ("lengths", "batch_size", "max_tokens", "expected"),
    [
        ([5, 3, 9, 4], 2, None, [[1, 3], [0, 2]]),  # sorted by length, then cut by batch_size
        ([5, 3, 9, 4], 10, None, [[1, 3, 0, 2]]),
        ([100, 100, 100, 100], 10, 250, [[0, 1], [2, 3]]),  # 3 x 100 > 250 padded tokens
        ([10, 300, 20], 10, 250, [[0, 2], [1]]),  # a window longer than the cap still gets its own batch
        ([384] * 5 + [200] * 4, 32, 2048, [[5, 6, 7, 8, 0], [1, 2, 3, 4]]),  # 5 x 384 <= 2048
    ],
)
def test_length_sorted_batches(lengths, batch_size, max_tokens, expected):
    features = [feature(n) for n in lengths]
    assert length_sorted_batches(features, batch_size, max_tokens) == expected


def test_pad_batch_pads_to_a_multiple_of_eight():
    arrays = pad_batch([feature(3), feature(10)], pad_id=0)
    assert arrays["input_ids"].shape == (2, 16)
    assert arrays["attention_mask"].sum(axis=1).tolist() == [3, 10]
    assert arrays["input_ids"][0, :4].tolist() == [1, 2, 3, 0]


def test_windows_overlap_by_doc_stride_and_keep_their_row(tiny_qa_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qa_model_dir)
    context = " ".join(f"word{i}" for i in range(60))
    features, failures = build_features(tokenizer, ["a?", "b?"], ["short one", context], Windowing(32, 8))
    assert failures == {}
    assert next(f.row for f in features) == 0 and {f.row for f in features[1:]} == {1}
    long_windows = [f for f in features if f.row == 1]
    assert len(long_windows) > 3 and all(len(f) <= 32 for f in long_windows)
    for before, after in itertools.pairwise(long_windows):
        tail = before.offsets[before.sequence_ids == 1][-8:].tolist()
        head = after.offsets[after.sequence_ids == 1][:8].tolist()
        assert tail == head  # doc_stride tokens shared by consecutive windows
    for f in features:  # only context tokens and [CLS] may carry an answer
        assert f.allowed.tolist() == [(s == 1) or (t == tokenizer.cls_token_id)
                                      for s, t in zip(f.sequence_ids, f.input_ids, strict=True)]  # fmt: skip
