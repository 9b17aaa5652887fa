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
import string
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocab(corpus_dirs: list[Path]) -> list[str]:
    """Specials, single characters, ``##`` continuation characters and every word of the corpus."""
    tokens = list(SPECIALS)
    chars = string.ascii_letters + string.digits + string.punctuation
    tokens += list(chars) + ["##" + c for c in string.ascii_lowercase + string.digits]
    words: set[str] = set()
    for folder in corpus_dirs:
        for path in sorted(folder.rglob("*.csv")):
            words.update(re.findall(r"\w+", path.read_text(encoding="utf-8", errors="replace")))
    seen = set(tokens)
    for word in sorted(words):
        if word not in seen:
            tokens.append(word)
            seen.add(word)
    return tokens


def build_tiny_model(folder: Path, seed: int = 7) -> Path:
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    vocab = build_vocab([ROOT / "examples"])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,  # 384-token windows must fit
    )
    model = BertForQuestionAnswering(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # save_pretrained writes the weights 0600; the images' user (uid 10001) must read a mounted copy.
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / ".demo" / "tiny-model"))
    args = parser.parse_args(argv)
    folder = build_tiny_model(Path(args.folder))
    print(f"tiny QA model written to {folder}\nuse it with: QA_MODEL={folder} make demo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
