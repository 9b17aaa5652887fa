#!/usr/bin/env python
"""Write a large question CSV (id, question, context) of short generated rows, for memory measurements.

.venv/bin/python scripts/generate_questions_csv.py --megabytes 200 /tmp/big/questions.csv
/usr/bin/time -v qa-answer answer /tmp/big /tmp/big-out --model .demo/tiny-model   # "Maximum resident"
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections.abc import Sequence
from pathlib import Path

WORDS = """
the a of to in on at for by with from and city river country people year first capital population born
founded built named called known largest between during after before north south king queen war church
school university museum company team music film book water bridge tower Paris London Berlin Rome Madrid
Vienna Tokyo Cairo Lima Oslo Prague Warsaw Dublin Athens Curie Newton Darwin Mozart Bach Tesla Edison
""".split()  # noqa: SIM905 (a word list reads better as prose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--megabytes", type=float, default=200.0, help="approximate file size (default 200)")
    parser.add_argument("--context-words", type=int, default=120, help="words per context (default 120)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    target = int(args.megabytes * 1_000_000)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with args.out.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "question", "context"])
        while stream.tell() < target:
            question = " ".join(rng.choices(WORDS, k=rng.randint(5, 10))) + "?"
            context = " ".join(rng.choices(WORDS, k=args.context_words)) + "."
            writer.writerow([f"r{rows}", question, context])
            rows += 1
    print(f"{args.out}: {rows} rows, {args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
