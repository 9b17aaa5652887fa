#!/usr/bin/env python
"""The CPU's matmul ceiling per precision: what a transformer's linear layers can reach at best.

Times ``linear`` on distilbert-base's shapes (2048 tokens x 768 -> 3072, then 3072 -> 768) in fp32 through
torch's BLAS (``nn.Linear``, what the transformers pipeline runs) and through oneDNN (what the core's CPU
fp32 runs), bf16 (bfloat16 weights and activations) and int8 (torch dynamic quantization, the kernel of
``--precision int8``), interleaved round by round; prints GFLOP/s (GOP/s for int8) per round, the medians
and the ratios to BLAS fp32. A precision can make the whole model faster only where its ceiling here is
well above fp32's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=int, default=2048, help="rows of the activation matrix (default 2048)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--seconds", type=float, default=0.5, help="time per precision per round (default 0.5)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def rate(step: Callable[[], object], flops: float, seconds: float) -> float:
    """Operations per second of ``step`` over at least ``seconds`` (after one warm-up call)."""
    step()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * flops / elapsed


#: The feed-forward pair of one distilbert-base layer (most of a layer's FLOPs), as (in, out) features.
SHAPES = [(768, 3072), (3072, 768)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flops = sum(2 * args.tokens * k * n for k, n in SHAPES)
    steps = precision_steps(args.tokens, SHAPES)
    print(
        f"cpu threads={torch.get_num_threads()} tokens={args.tokens} shapes={SHAPES} "
        f"torch={torch.__version__} quantized engine={torch.backends.quantized.engine}"
    )
    rates = measure(steps, flops, args.rounds, args.seconds)
    report(rates)
    return 0


def precision_steps(tokens: int, shapes: list[tuple[int, int]]) -> dict[str, Callable[[], None]]:
    """One step per precision, each running the same layers on the same activations, so that only the
    kernel differs between them."""
    import torch

    fp32 = [(torch.randn(tokens, k), torch.nn.Linear(k, n).eval()) for k, n in shapes]
    bf16 = [
        (x.to(torch.bfloat16), torch.nn.Linear(k, n).to(torch.bfloat16).eval())
        for (x, _), (k, n) in zip(fp32, shapes, strict=True)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization and torch.jit announce their deprecations
        from torch.ao.quantization import quantize_dynamic
        from torch.utils.mkldnn import to_mkldnn

        onednn = [(x, to_mkldnn(torch.nn.Sequential(lin))) for x, lin in fp32]

        int8 = [
            (x, quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8))
            for x, lin in fp32
        ]
    return {"fp32": runner(fp32), "fp32-onednn": runner(onednn), "bf16": runner(bf16), "int8": runner(int8)}


def runner(pairs: list) -> Callable[[], None]:
    """A step applying each layer to its input, as one timed unit."""

    def step() -> None:
        for x, layer in pairs:
            layer(x)

    return step


def measure(
    steps: dict[str, Callable[[], None]], flops: float, rounds: int, seconds: float
) -> dict[str, list[float]]:
    """G(FL)OP/s per precision per round, the precisions taking turns within each round so that load from
    other processes hits them alike; prints each round as it ends."""
    import torch

    rates: dict[str, list[float]] = {k: [] for k in steps}
    with torch.inference_mode():
        for round_no in range(1, rounds + 1):
            for key, step in steps.items():
                rates[key].append(rate(step, flops, seconds) / 1e9)
            print(f"round {round_no}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
    return rates


def report(rates: dict[str, list[float]]) -> None:
    """Medians, bests and the ratios to BLAS fp32: the best round is the one nearest the ceiling on a
    shared machine, the median the one to expect."""
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    print("median GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()) + " (int8: GOP/s)")
    print("best GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()) + " (int8: GOP/s)")
    for key in ("fp32-onednn", "bf16", "int8"):
        print(f"{key}_vs_fp32: median {med[key] / med['fp32']:.2f}, best {best[key] / best['fp32']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
