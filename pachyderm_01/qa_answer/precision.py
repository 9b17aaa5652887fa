"""Precision variants ("engines") of one loaded model, and the start-up probe that keeps the fastest.

fp32 runs the model's float32 weights (on a CPU, a copy whose linear layers use oneDNN; answers equal the
transformers pipeline's) and is always kept: it also answers the sample of rows that measures agreement
with fp32. On a CPU, bf16 runs a bfloat16 copy of the weights (no per-op casts, faster than autocast there)
and int8 a copy whose ``nn.Linear`` layers are torch dynamic-quantized (int8 weights, activations quantized
per batch). On CUDA, fp16 and bf16 run the fp32 weights under ``torch.autocast``, which keeps softmax and
layer norms in fp32. Which one is fastest depends on the machine's matrix instructions (AMX, AVX512-BF16,
VNNI, tensor cores), so ``fast`` times them on real data.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

CPU_CANDIDATES = ("fp32", "bf16", "int8")
CUDA_CANDIDATES = ("fp16", "bf16")
#: After the first timed round, further passes (for candidates still in the running) stop after this long.
PROBE_SECONDS = 3.0
#: Timed passes per candidate at most; the best (least disturbed) one counts.
PROBE_MAX_PASSES = 4
#: A candidate this much slower than the best after a round is out: more passes would not change the choice
#: (wide enough that one pass disturbed by another process does not decide between close candidates).
PROBE_DROP_RATIO = 1.5

Logits = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Engine:
    """One way to run the model: ``forward(inputs) -> (start_logits, end_logits)`` on the model's device."""

    precision: str
    forward: Callable[[Mapping[str, torch.Tensor]], Logits]
    module: Any  # the nn.Module that runs (a copy for CPU bf16 / int8)


def check_precision_device(precision: str, device: torch.device) -> None:
    """Raise ``ValueError`` for a precision the device has no kernels for."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "precision fp16 runs on CUDA devices only; on a CPU use bf16, int8 or fast "
            "(see docs/answering-core.md)"
        )
    if precision == "int8" and device.type != "cpu":
        raise ValueError(
            "precision int8 (torch dynamic quantization) runs on a CPU only; on a GPU use fp16, bf16 or fast"
        )


def candidates(precision: str, device: torch.device) -> tuple[str, ...]:
    """The precisions ``precision`` stands for on ``device``: one, or several for ``fast`` to time."""
    if precision != "fast":
        return (precision,)
    if device.type != "cuda":
        return CPU_CANDIDATES
    bf16_ok = torch.cuda.is_bf16_supported()
    return tuple(p for p in CUDA_CANDIDATES if p != "bf16" or bf16_ok)


def build_engine(model: Any, precision: str, device: torch.device) -> Engine:
    """An engine for ``precision`` over the fp32 ``model`` (left unchanged; CPU bf16 / int8 run a copy)."""
    check_precision_device(precision, device)
    if precision == "fp32":
        if device.type == "cpu":
            fp32 = onednn_fp32(model)
            return Engine("fp32", _plain(fp32), fp32)
        return Engine("fp32", _plain(model), model)
    if device.type == "cuda":
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return Engine(precision, _autocast(model, device, dtype), model)
    if precision == "bf16":
        bf16 = copy.deepcopy(model).to(dtype=torch.bfloat16).eval()
        return Engine("bf16", _plain(bf16), bf16)
    if precision == "int8":
        int8 = quantize_int8(model)
        return Engine("int8", _plain(int8), int8)
    raise ValueError(f"no engine for precision {precision!r} on {device}")


def onednn_fp32(model: Any) -> Any:
    """A copy of ``model`` whose ``nn.Linear`` layers run float32 oneDNN kernels instead of the BLAS's.

    Same float32 arithmetic (logits within ~1e-5, answers equal the pipeline's), but torch's CPU BLAS (MKL)
    takes a slow path on AMD CPUs: on 2 Zen 4 cores oneDNN ran distilbert-base's linear layers about twice as
    fast (docs/answering-core.md).
    """
    _require_linear_layers(model)
    with warnings.catch_warnings():
        # its modules are TorchScript classes, and torch.jit.script_method announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils.mkldnn import to_mkldnn

        return to_mkldnn(copy.deepcopy(model)).eval()


def quantize_int8(model: Any) -> Any:
    """A copy of ``model`` with int8 ``nn.Linear`` layers (torch dynamic quantization, CPU kernels)."""
    _require_linear_layers(model)
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager dynamic path still ships in torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8).eval()


def _require_linear_layers(model: Any) -> None:
    """Engines are built from the model as loaded; one built from another engine's copy would be wrong."""
    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        raise ValueError("the model has no nn.Linear layer: engines must be built from the model as loaded")


def _plain(module: Any) -> Callable[[Mapping[str, torch.Tensor]], Logits]:
    def forward(inputs: Mapping[str, torch.Tensor]) -> Logits:
        output = module(**inputs)
        return output.start_logits, output.end_logits

    return forward


def _autocast(module: Any, device: torch.device, dtype: torch.dtype) -> Callable[..., Logits]:
    def forward(inputs: Mapping[str, torch.Tensor]) -> Logits:
        with torch.autocast(device_type=device.type, dtype=dtype):
            output = module(**inputs)
        return output.start_logits, output.end_logits

    return forward


@dataclass(frozen=True)
class ProbeResult:
    """What the ``fast`` probe measured: the best seconds per pass of each candidate, and the winner."""

    chosen: Engine
    seconds: dict[str, float]
    passes: int
    shape: tuple[int, int]

    def line(self) -> str:
        timings = ", ".join(f"{name} {sec:.3f}s" for name, sec in self.seconds.items())
        return (
            f"precision fast: best seconds per pass ({self.passes} round(s)) on a batch of "
            f"{self.shape[0]}x{self.shape[1]} tokens: {timings}; using {self.chosen.precision}"
        )


def pick_fastest(
    engines: Sequence[Engine],
    inputs: Mapping[str, torch.Tensor],
    budget_s: float = PROBE_SECONDS,
    max_passes: int = PROBE_MAX_PASSES,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Time ``engines`` on one real batch, interleaved, and keep the fastest.

    Each engine runs once untimed (kernel selection, caches), then once timed. Then only the candidates within
    ``PROBE_DROP_RATIO`` of the best get more timed passes, round-robin so that load from other processes hits
    them alike, for ``budget_s`` more seconds at most and ``max_passes`` in all. A pass ends when its logits
    are on the host, so GPU passes are timed whole.
    """
    if not engines:
        raise ValueError("no engine to choose from")
    best = {engine.precision: float("inf") for engine in engines}
    running = list(engines)
    passes = 0
    with torch.inference_mode():
        for engine in engines:
            _host(engine.forward(inputs))
        first_round_done = 0.0
        while running and passes < max_passes and (passes == 0 or clock() - first_round_done < budget_s):
            passes += 1
            for engine in running:
                start = clock()
                _host(engine.forward(inputs))
                best[engine.precision] = min(best[engine.precision], clock() - start)
            fastest = min(best.values())
            running = [e for e in running if best[e.precision] <= PROBE_DROP_RATIO * fastest]
            if len(running) == 1:
                break
            if passes == 1:
                first_round_done = clock()
    chosen = min(engines, key=lambda e: best[e.precision])
    rows, width = inputs["input_ids"].shape
    return ProbeResult(chosen=chosen, seconds=best, passes=passes, shape=(int(rows), int(width)))


def _host(logits: Logits) -> None:
    for tensor in logits:
        tensor.float().cpu()
