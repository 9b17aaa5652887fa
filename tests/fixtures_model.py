"""Fixtures: a tiny random BERT QA model + fast tokenizer, built offline and saved to a temp folder.

Loaded through the production loader (``load_qa_model``) so tests exercise the real code path.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

_WORDS = """
the a an of to in on at for by with from and or but not is was are were be been has have had do does did
what who whom whose which when where why how many much year city river country people first last new old
capital population born died founded built named called known largest smallest between during after before
north south east west king queen war peace church school university museum company team game music film book
water fire earth air light dark red green blue black white gold silver iron stone wood house road bridge tower
one two three four five six seven eight nine ten hundred thousand million century
Paris London Berlin Rome Madrid Vienna Tokyo Beijing Cairo Lima Oslo Prague Warsaw Dublin Athens
France England Germany Italy Spain Austria Japan China Egypt Peru Norway Poland Ireland Greece
Napoleon Einstein Curie Newton Darwin Mozart Bach Tesla Edison Lincoln Caesar Cleopatra
The A An Of In On At What Who When Where Why How It This That He She They We
it this that he she they we his her their its our
""".split()  # noqa: SIM905 (a word list reads better as prose)

# Accented / non-Latin words and pieces so unicode contexts tokenize into real ids rather than [UNK].
_UNICODE = [
    "café", "Zürich", "München", "São", "Paulo", "naïve", "Ελλάδα",
    "東京", "東", "京", "é", "ü", "ö", "ñ", "ç",
]  # fmt: skip

_SUBWORDS = [
    "##s", "##es", "##ed", "##ing", "##er", "##est", "##ly", "##ion", "##al", "##ic", "##an", "##en", "##on",
    "##ia", "##ra", "##ro", "##la", "##le", "##na", "##ta", "##to", "##ri", "##ti", "##ne", "##re", "##in",
    "##a", "##e", "##i", "##o", "##u", "##n", "##r", "##t", "##l", "##d", "##y", "##0", "##1", "##2", "##5",
    "##é", "##ü", "##ö",
]  # fmt: skip


def tiny_vocab() -> list[str]:
    """A deterministic WordPiece vocabulary of a few hundred tokens (specials, words, chars, pieces)."""
    tokens: list[str] = list(SPECIAL_TOKENS)
    chars = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    for tok in chars + pieces + _WORDS + [w.lower() for w in _WORDS] + _UNICODE + _SUBWORDS:
        if tok not in tokens:
            tokens.append(tok)
    return tokens


def build_tiny_qa_model(folder: Path, seed: int = 1234) -> Path:
    """Save a random BertForQuestionAnswering (hidden 32, 2 layers) and its fast tokenizer into ``folder``."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(tiny_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=False)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model = BertForQuestionAnswering(config)
    # Random init gives near-uniform logits; widen them so spans (and scores) are well separated.
    with torch.no_grad():
        model.qa_outputs.weight.mul_(20.0)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qa_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a tiny random BERT QA model + tokenizer (no network)."""
    return build_tiny_qa_model(tmp_path_factory.mktemp("tiny-qa-model"))


@pytest.fixture(scope="session")
def tiny_qa_model(tiny_qa_model_dir: Path):
    """The tiny model loaded once through the production loader (fp32, default settings)."""
    from qa_answer.qa_config import QAConfig
    from qa_answer.qa_core import load_qa_model

    return load_qa_model(QAConfig(model=str(tiny_qa_model_dir)))
