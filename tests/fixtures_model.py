"""Fixtures: a tiny random BERT QA model + fast tokenizer, built offline (pachyderm_local.tiny_model).

Loaded through the production loader (``load_qa_model``) so tests exercise the real code path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pachyderm_local.tiny_model import build_qa_model, wordpiece_vocab

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
    return wordpiece_vocab(_WORDS + [w.lower() for w in _WORDS] + _UNICODE + _SUBWORDS)


def build_tiny_qa_model(folder: Path, seed: int = 1234) -> Path:
    """A random BERT QA model (hidden 32, 2 layers) with span logits widened so spans are well separated."""
    return build_qa_model(folder, tiny_vocab(), seed, logit_scale=20.0)


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
