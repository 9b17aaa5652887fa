"""Random-weight question-answering models built offline, for tests, `make tiny-model` and the QA benchmark.

The weights are random, so answers are arbitrary spans of the context; the code path (tokenizer, windows,
span decoding) is the real one. A development tool: the images' code never imports it.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: "bert-tiny": hidden 32, 2 layers (fast enough for every test); "distilbert-base": the size of the hub's
#: default QA model, so a benchmark pays the real model's FLOPs.
Architecture = Literal["bert-tiny", "distilbert-base"]


def wordpiece_vocab(words: Iterable[str] = ()) -> list[str]:
    """Specials, single characters and ``##`` continuation characters, then ``words`` not already in."""
    tokens = list(SPECIAL_TOKENS)
    tokens += list(string.ascii_letters + string.digits + string.punctuation)
    tokens += ["##" + c for c in string.ascii_lowercase + string.digits]
    seen = set(tokens)
    for word in words:
        if word not in seen:
            seen.add(word)
            tokens.append(word)
    return tokens


def build_qa_model(
    folder: Path,
    vocab: list[str],
    seed: int,
    *,
    architecture: Architecture = "bert-tiny",
    logit_scale: float = 1.0,
) -> Path:
    """Save a random QA model and its fast WordPiece tokenizer over ``vocab`` into ``folder``.

    ``logit_scale`` widens the span logits (random init gives near-uniform ones) so spans and scores are well
    separated. The files are left world-readable: the images' user (uid 10001) must read a mounted copy.
    """
    import torch
    from transformers import (
        BertConfig,
        BertForQuestionAnswering,
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertForQuestionAnswering,
        DistilBertTokenizerFast,
    )

    folder.mkdir(parents=True, exist_ok=True)
    ids = {token: index for index, token in enumerate(vocab)}
    torch.manual_seed(seed)
    if architecture == "distilbert-base":
        tokenizer = DistilBertTokenizerFast(vocab=ids, do_lower_case=False)
        model = DistilBertForQuestionAnswering(DistilBertConfig(vocab_size=len(vocab)))
    else:
        tokenizer = BertTokenizerFast(vocab=ids, do_lower_case=False)
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,  # 384-token windows must fit
        )
        model = BertForQuestionAnswering(config)
    if logit_scale != 1.0:
        with torch.no_grad():
            model.qa_outputs.weight.mul_(logit_scale)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # save_pretrained writes the weights 0600
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder
