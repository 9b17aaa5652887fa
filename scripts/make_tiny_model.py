#!/usr/bin/env python3
"""Build a tiny random BERT question-answering model + fast tokenizer into a folder, offline.

For trying the pipeline where no model hub is reachable: ``QA_MODEL=<folder> make demo``. The weights
are random, so answers are arbitrary spans of the context; the code path (tokenizer, windows, span
decoding) is the real one. The vocabulary is built from the example CSVs plus letters and digits.

Usage: python scripts/make_tiny_model.py [FOLDER]   (default: .demo/tiny-model)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pachyderm_local.tiny_model import build_qa_model, wordpiece_vocab

ROOT = Path(__file__).resolve().parent.parent


def corpus_words(corpus_dirs: list[Path]) -> list[str]:
    """Every word of the CSVs under ``corpus_dirs``, sorted, so they tokenize as whole words."""
    words: set[str] = set()
    for folder in corpus_dirs:
        for path in sorted(folder.rglob("*.csv")):
            words.update(re.findall(r"\w+", path.read_text(encoding="utf-8", errors="replace")))
    return sorted(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / ".demo" / "tiny-model"))
    args = parser.parse_args(argv)
    vocab = wordpiece_vocab(corpus_words([ROOT / "examples"]))
    folder = build_qa_model(Path(args.folder), vocab, seed=7)
    print(f"tiny QA model written to {folder}\nuse it with: QA_MODEL={folder} make demo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
