"""Load a question-answering model + fast tokenizer once, on the chosen device and precision.

Failures become one ``ModelLoadError`` that says which model, where it was looked for and how to point
``QA_MODEL`` at a local folder, because the library's own errors assume network access.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qa_answer.errors import ModelLoadError
from qa_answer.precision import check_precision_device
from qa_answer.qa_config import QAConfig

HOW_TO_FIX = (
    "To run without network access, save the model once with save_pretrained (or `hf download MODEL "
    "--local-dir DIR`) and set QA_MODEL=DIR (or --model DIR) to that local folder; it must hold config.json, "
    "the weights and the tokenizer files."
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference and what the ``model`` column should call it."""

    model: Any  # transformers PreTrainedModel (typed loosely: transformers has no stable public type here)
    tokenizer: Any  # a fast (tokenizers-backed) tokenizer
    device: torch.device
    name: str  # without the precision suffix


def resolve_device(device: str) -> torch.device:
    """``auto`` means the first CUDA device when one is usable, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} was requested but no CUDA device is available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return resolved


def local_folder(model: str) -> Path | None:
    """The folder ``model`` names when it is one; ``None`` for a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_like_path = model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
    if looks_like_path:
        raise ModelLoadError(
            f"could not load QA model {model!r}: local folder {path.resolve()} does not exist. {HOW_TO_FIX}"
        )
    return None


def check_readable(model: str, folder: Path) -> None:
    """Name what this process may not read in a model folder: the library reports such files as missing."""
    if not os.access(folder, os.R_OK | os.X_OK):
        blocked = [folder]
    else:
        blocked = [p for p in sorted(folder.iterdir()) if p.is_file() and not os.access(p, os.R_OK)]
    if blocked:
        listed = ", ".join(
            f"{p} (mode {p.stat().st_mode & 0o777:04o}, owner uid {p.stat().st_uid})" for p in blocked
        )
        raise ModelLoadError(
            f"could not load QA model {model!r}: not readable by uid {os.getuid()}: {listed}. "
            "Make the model folder world-readable (chmod -R a+rX DIR) or run as its owner."
        )


def load_model(config: QAConfig) -> LoadedModel:
    """Load tokenizer and model from a local folder or the hub (cache first when offline)."""
    from huggingface_hub import constants as hub_constants
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    device = resolve_device(config.device)
    folder = local_folder(config.model)
    offline = hub_constants.is_offline_mode()
    source = str(folder) if folder is not None else config.model
    if folder is not None:
        check_readable(config.model, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForQuestionAnswering.from_pretrained(source, local_files_only=offline)
    except (
        Exception
    ) as exc:  # the library raises OSError, ValueError, KeyError... depending on what is missing
        raise ModelLoadError(
            _describe_failure(config.model, folder, offline, hub_constants.HF_HUB_CACHE, exc)
        ) from exc

    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"QA model {config.model!r} has no fast tokenizer (tokenizer.json); one is required"
        )
    if tokenizer.padding_side != "right":
        raise ModelLoadError(
            f"QA model {config.model!r}: tokenizers that put the context before the question "
            "(padding_side='left') are not supported"
        )
    _check_window_fits(config, model, tokenizer)

    try:
        check_precision_device(config.precision, device)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    # Loaded in fp32 whatever the precision: the reduced-precision engines are built from it (precision.py)
    # and it answers the rows sampled to measure their agreement with fp32.
    model = model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        name=model_name(config, folder, model),
    )


def model_name(config: QAConfig, folder: Path | None, model: Any) -> str:
    """``<hub id or folder name>[@<revision>]``; the core adds ``+<precision>`` when it is not fp32."""
    base = folder.resolve().name if folder is not None else config.model
    revision = getattr(model.config, "_commit_hash", None)
    return f"{base}@{revision}" if revision else base


def _check_window_fits(config: QAConfig, model: Any, tokenizer: Any) -> None:
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    limit = min(x for x in limits if isinstance(x, int) and x > 0)
    if config.max_seq_len > limit:
        raise ModelLoadError(
            f"max_seq_len={config.max_seq_len} exceeds what QA model {config.model!r} takes ({limit} tokens)"
        )


def _describe_failure(model: str, folder: Path | None, offline: bool, cache: str, exc: BaseException) -> str:
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    if folder is not None:
        where = f"looked in local folder {folder.resolve()}"
    elif offline:
        where = (
            f"looked for hub id {model!r} only in the Hugging Face cache at {cache} "
            "(offline: HF_HUB_OFFLINE is set)"
        )
    else:
        where = (
            f"looked for hub id {model!r} in the Hugging Face cache at {cache} and on the hub "
            "(network unreachable or id unknown; HF_HUB_OFFLINE=1 skips the network)"
        )
    return f"could not load QA model {model!r}: {where}. Cause: {type(exc).__name__}: {cause}. {HOW_TO_FIX}"
