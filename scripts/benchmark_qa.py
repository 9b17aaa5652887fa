#!/usr/bin/env python
"""Questions/second of a per-row QA pipeline (the original class projects' way) vs qa-answer's batched core.

One run, same rows, same model (distilbert-base architecture with random weights: same FLOPs as the real
model, no download) and a tokenizer built from a generated ~30k-token WordPiece vocabulary. Variants run
interleaved chunk by chunk (A B C D E A B C D E ...) so machine noise hits all of them alike; medians over
rounds.

    A  transformers 5.2 pipeline("question-answering") called once per row, fp32 (the class projects' way)
    B  qa_answer.qa_core, fp32
    C  qa_answer.qa_core, bf16
    D  qa_answer.qa_core, int8 (torch dynamic quantization)
    E  qa_answer.qa_core, fast (times the CPU candidates on its first batch and keeps the fastest)

With ``--device cuda`` (scripts/device_check.sh) the pipeline and the core run on the GPU and D is fp16
(int8 is a CPU engine); E then chooses between fp16 and bf16 autocast.

Every variant first answers a few rows untimed (kernel set-up; E's start-up probe happens there and is
printed). C, D and E include the cost of answering their sample of rows in fp32 too, as ``qa-answer`` does.
The last four lines are ``speedup_fp32_vs_per_row_pipeline``, ``speedup_fast_vs_per_row_pipeline``,
``fast_precision`` and ``fast_agreement_with_fp32`` (share of all rows where E's span equals B's).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pachyderm_local.tiny_model import build_qa_model, wordpiece_vocab

#: Variant letter -> precision of the batched core (A is the per-row pipeline), per device type.
CORE_VARIANTS = {
    "cpu": {"B": "fp32", "C": "bf16", "D": "int8", "E": "fast"},
    "cuda": {"B": "fp32", "C": "bf16", "D": "fp16", "E": "fast"},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512, help="rows per round (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="core: windows per forward pass (default: the core's)"
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=128,
        help="rows per answer() call and per variant's turn (default 128)",
    )
    parser.add_argument(
        "--warmup-rows", type=int, default=16, help="rows each variant answers untimed first (default 16)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument(
        "--long-share", type=float, default=0.10, help="share of ~600-word contexts (default 0.1)"
    )
    parser.add_argument("--vocab-size", type=int, default=30000, help="generated WordPiece vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    return parser.parse_args(argv)


def generated_vocab(size: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """A WordPiece vocabulary of ``size`` tokens, and the whole words in it (for text generation)."""
    tokens = wordpiece_vocab()
    seen = set(tokens)
    words: list[str] = []
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"

    def syllable() -> str:
        return rng.choice(consonants) + rng.choice(vowels) + rng.choice(["", "", "n", "r", "s", "l"])

    while len(tokens) < size:
        if rng.random() < 0.2:  # continuation pieces so unseen words split into several tokens
            token = "##" + "".join(syllable() for _ in range(rng.randint(1, 2)))
        else:
            token = "".join(syllable() for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.15:
                token = token.capitalize()
        if token not in seen:
            seen.add(token)
            tokens.append(token)
            if not token.startswith("##"):
                words.append(token)
    return tokens, words


def generated_rows(
    count: int, words: list[str], long_share: float, rng: random.Random
) -> tuple[list[str], list[str]]:
    """SQuAD-like rows: ~10-word questions, ~150-word contexts, ``long_share`` of ~600-word contexts."""
    weights = [1.0 / (rank + 1) for rank in range(len(words))]  # Zipf-like word frequencies

    def text(n: int) -> str:
        chosen = rng.choices(words, weights=weights, k=n)
        out = []
        for i, word in enumerate(chosen):
            if rng.random() < 0.05:  # an out-of-vocabulary compound, split by WordPiece
                word = word + rng.choice(words).lower()
            out.append(word + ("." if i % 17 == 16 else "," if i % 7 == 6 else ""))
        return " ".join(out)

    questions, contexts = [], []
    for i in range(count):
        questions.append(text(rng.randint(7, 13)) + "?")
        long = i < round(count * long_share)
        contexts.append(text(rng.randint(550, 650) if long else rng.randint(120, 180)))
    order = list(range(count))
    rng.shuffle(order)
    return [questions[i] for i in order], [contexts[i] for i in order]


@dataclass
class Measured:
    """What the timed rounds leave: rates per variant per round, the last round's results, and the
    agreement with fp32 that each core sampled itself in the last round."""

    rates: dict[str, list[float]]
    last: dict[str, list]
    sampled: dict[str, str]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    core_variants = CORE_VARIANTS["cuda" if args.device.startswith("cuda") else "cpu"]
    rng = random.Random(args.seed)
    vocab, words = generated_vocab(args.vocab_size, rng)
    questions, contexts = generated_rows(args.rows, words, args.long_share, rng)

    with tempfile.TemporaryDirectory(prefix="qa-bench-") as tmp:
        folder = build_qa_model(
            Path(tmp) / "distilbert-base-random", vocab, args.seed, architecture="distilbert-base"
        )
        per_row, core = load_models(folder, args, core_variants.values())
        print_setup(args, per_row, questions, contexts, len(vocab))

        def run_pipeline(qs: list[str], cs: list[str]) -> list:
            return [per_row(question=q, context=c) for q, c in zip(qs, cs, strict=True)]

        variants: dict[str, Callable[[list[str], list[str]], list]] = {"A": run_pipeline}
        variants.update({key: core[p].answer for key, p in core_variants.items()})
        warm_up(variants, questions, contexts, min(args.warmup_rows, args.rows))
        fast = core["fast"]
        if fast.probe is not None:
            print(fast.probe.line(), flush=True)
        measured = measure(variants, core, questions, contexts, args)

    report(measured, core_variants, fast.precision, args)
    return 0


def load_models(folder: Path, args: argparse.Namespace, precisions: Iterable[str]) -> tuple[Callable, dict]:
    """The per-row transformers pipeline and one batched core per precision, all from the same folder."""
    from qa_answer.qa_config import QAConfig
    from qa_answer.qa_core import load_qa_model
    from transformers import pipeline

    per_row = pipeline("question-answering", model=str(folder), tokenizer=str(folder), device=args.device)
    core = {
        p: load_qa_model(
            QAConfig(model=str(folder), batch_size=args.batch_size, device=args.device, precision=p)
        )
        for p in precisions
    }
    return per_row, core


def print_setup(
    args: argparse.Namespace, per_row: Callable, questions: list[str], contexts: list[str], vocab_size: int
) -> None:
    """One line naming the run's settings and its window count, so that figures can be compared."""
    import torch

    windows = len(
        per_row.tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=384,
            stride=128,
            return_overflowing_tokens=True,
        )["input_ids"]
    )
    print(
        f"rows={args.rows} windows={windows} threads={torch.get_num_threads()} "
        f"batch_size={args.batch_size} chunk_rows={args.chunk_rows} vocab={vocab_size} "
        f"torch={torch.__version__} device={args.device}",
        flush=True,
    )


def warm_up(
    variants: dict[str, Callable[[list[str], list[str]], list]],
    questions: list[str],
    contexts: list[str],
    rows: int,
) -> None:
    """Answer the first rows untimed with every variant, so that kernel set-up and the fast variant's
    probe stay out of the timed rounds."""
    for key, run in variants.items():
        start = time.perf_counter()
        run(questions[:rows], contexts[:rows])
        print(f"warm-up {key}: {time.perf_counter() - start:.1f}s", flush=True)


def measure(
    variants: dict[str, Callable[[list[str], list[str]], list]],
    core: dict,
    questions: list[str],
    contexts: list[str],
    args: argparse.Namespace,
) -> Measured:
    """Time every variant over ``args.rounds`` rounds, printing each round's rates as it ends."""
    rates: dict[str, list[float]] = {k: [] for k in variants}
    last: dict[str, list] = {}
    sampled: dict[str, str] = {}
    for round_no in range(1, args.rounds + 1):
        for model in core.values():
            model.take_agreement()  # each round samples the same rows, so pays the same
        seconds, last = timed_round(variants, questions, contexts, args.chunk_rows)
        for key in variants:
            rates[key].append(args.rows / seconds[key])
        sampled = {p: a.line() for p, m in core.items() if (a := m.take_agreement()) is not None}
        print(f"round {round_no}: " + ", ".join(f"{k} {rates[k][-1]:.2f} q/s" for k in variants), flush=True)
    return Measured(rates, last, sampled)


def timed_round(
    variants: dict[str, Callable[[list[str], list[str]], list]],
    questions: list[str],
    contexts: list[str],
    chunk_rows: int,
) -> tuple[dict[str, float], dict[str, list]]:
    """Seconds and results per variant for all rows, interleaved per chunk rather than per round: load
    from other processes then hits every variant alike."""
    seconds = dict.fromkeys(variants, 0.0)
    results: dict[str, list] = {k: [] for k in variants}
    for i in range(0, len(questions), chunk_rows):
        qs, cs = questions[i : i + chunk_rows], contexts[i : i + chunk_rows]
        for key, run in variants.items():
            start = time.perf_counter()
            results[key].extend(run(qs, cs))
            seconds[key] += time.perf_counter() - start
    return seconds, results


def same_span_share(first: list, second: list, rows: int) -> float:
    """Share of rows where two core variants both answered and chose the same span."""
    from qa_answer.results import RowFailure

    same = sum(
        not isinstance(b, RowFailure)
        and not isinstance(c, RowFailure)
        and (b.start, b.end) == (c.start, c.end)
        for b, c in zip(first, second, strict=True)
    )
    return same / rows


def report(
    measured: Measured, core_variants: dict[str, str], fast_precision: str, args: argparse.Namespace
) -> None:
    """Median rates, failures, agreement and speedups; the last four lines are the headline figures the
    module docstring names, so they keep their names and order."""
    from qa_answer.results import RowFailure

    last = measured.last
    med = {k: statistics.median(v) for k, v in measured.rates.items()}
    failures = sum(isinstance(r, RowFailure) for k in core_variants for r in last[k])
    same_as_pipeline = sum(
        not isinstance(b, RowFailure) and (b.answer, b.start, b.end) == (a["answer"], a["start"], a["end"])
        for a, b in zip(last["A"], last["B"], strict=True)
    )
    print(
        "median q/s: A per-row pipeline fp32 "
        + f"{med['A']:.2f}, "
        + ", ".join(f"{k} core {p} {med[k]:.2f}" for k, p in core_variants.items())
        + f" (rounds={args.rounds})"
    )
    print(f"core rows failed: {failures}")
    print(f"fp32_core_same_answer_as_pipeline: {same_as_pipeline / args.rows:.4f}")
    for key, precision in core_variants.items():
        if precision != "fp32":
            print(
                f"{precision}_same_answer_as_fp32: {same_span_share(last['B'], last[key], args.rows):.4f} "
                f"(sampled in the run: {measured.sampled[precision]})"
            )
    for key, precision in core_variants.items():
        if precision not in ("fp32", "fast"):
            print(f"speedup_{precision}_vs_per_row_pipeline: {med[key] / med['A']:.2f}")
    print(f"speedup_fp32_vs_per_row_pipeline: {med['B'] / med['A']:.2f}")
    print(f"speedup_fast_vs_per_row_pipeline: {med['E'] / med['A']:.2f}")
    print(f"fast_precision: {fast_precision}")
    print(f"fast_agreement_with_fp32: {same_span_share(last['B'], last['E'], args.rows):.4f}")


if __name__ == "__main__":
    sys.exit(main())
