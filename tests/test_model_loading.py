"""Loading the QA model through production code: by folder, from an offline hub cache, and the errors."""

from __future__ import annotations

import shutil

import huggingface_hub.constants as hub_constants
import pytest
import torch
from qa_answer.errors import ModelLoadError
from qa_answer.model_loading import resolve_device
from qa_answer.qa_config import QAConfig
from qa_answer.qa_core import load_qa_model
from qa_answer.results import Span

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, tiny_qa_model_dir):
    """An offline Hugging Face cache holding the tiny model as hub id ``acme/tiny-qa`` at REVISION."""
    repo = tmp_path / "hub" / "models--acme--tiny-qa"
    shutil.copytree(tiny_qa_model_dir, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_load_by_folder(tiny_qa_model_dir):
    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), device="cpu"))
    assert model.name == tiny_qa_model_dir.name
    assert model.device == torch.device("cpu")
    [span] = model.answer(["Where?"], ["Curie was born in Warsaw."])
    assert isinstance(span, Span) and "Curie was born in Warsaw."[span.start : span.end] == span.answer


def test_load_hub_id_from_offline_cache_names_the_revision(offline_cache):
    model = load_qa_model(QAConfig(model="acme/tiny-qa"))
    assert model.name == f"acme/tiny-qa@{REVISION}"
    bf16 = load_qa_model(QAConfig(model="acme/tiny-qa", precision="bf16"))
    assert bf16.name == f"acme/tiny-qa@{REVISION}+bf16"
    # bf16 runs a bfloat16 copy; the fp32 model stays to answer the rows sampled for agreement
    assert next(bf16._engine.module.parameters()).dtype == torch.bfloat16
    assert next(bf16._reference.module.parameters()).dtype == torch.float32


def test_unknown_hub_id_offline(offline_cache):
    with pytest.raises(ModelLoadError) as err:
        load_qa_model(QAConfig(model="acme/no-such-model"))
    message = str(err.value)
    assert message.startswith(
        "could not load QA model 'acme/no-such-model': looked for hub id 'acme/no-such-model' only in the "
        f"Hugging Face cache at {offline_cache} (offline: HF_HUB_OFFLINE is set). Cause: OSError: "
    )
    assert message.endswith(
        "To run without network access, save the model once with save_pretrained (or `hf download MODEL "
        "--local-dir DIR`) and set QA_MODEL=DIR (or --model DIR) to that local folder; it must hold "
        "config.json, the weights and the tokenizer files."
    )


@pytest.mark.parametrize("name", ["/nonexistent/qa-model", "./models/missing", "~/no/such/model"])
def test_missing_local_folder(name):
    with pytest.raises(ModelLoadError) as err:
        load_qa_model(QAConfig(model=name))
    message = str(err.value)
    assert message.startswith(f"could not load QA model {name!r}: local folder ")
    assert " does not exist. To run without network access" in message
    assert "set QA_MODEL=DIR (or --model DIR)" in message


def test_folder_without_a_model(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_qa_model(QAConfig(model=str(tmp_path / "empty-model")))
    folder = tmp_path / "empty-model"
    message = str(err.value)
    assert message.startswith(f"could not load QA model '{folder}': looked in local folder {folder}. ")
    assert "Cause: " in message and "QA_MODEL=DIR" in message


def test_window_longer_than_the_model_accepts(tiny_qa_model_dir):
    with pytest.raises(ModelLoadError) as err:
        load_qa_model(QAConfig(model=str(tiny_qa_model_dir), max_seq_len=1024, doc_stride=128))
    assert str(err.value) == (
        f"max_seq_len=1024 exceeds what QA model '{tiny_qa_model_dir}' takes (512 tokens)"
    )


def test_cuda_requested_without_cuda(monkeypatch, tiny_qa_model_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    no_cuda = r"^device 'cuda:1' was requested but no CUDA device is available$"
    with pytest.raises(ModelLoadError, match=no_cuda):
        load_qa_model(QAConfig(model=str(tiny_qa_model_dir), device="cuda:1"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(model=" "), "model must name a Hugging Face hub id or a local folder (QA_MODEL / --model)"),
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(max_answer_len=0), "max_answer_len must be an integer >= 1, got 0"),
        (dict(max_seq_len=8), "max_seq_len must be an integer >= 16, got 8"),
        (
            dict(doc_stride=192),
            "doc_stride must be an integer >= 0 and < max_seq_len/2 = 192 (max_seq_len=384), got 192",
        ),
        (
            dict(max_seq_len=128, doc_stride=128),
            "doc_stride must be an integer >= 0 and < max_seq_len/2 = 64 (max_seq_len=128), got 128",
        ),
        (
            dict(doc_stride=-1),
            "doc_stride must be an integer >= 0 and < max_seq_len/2 = 192 (max_seq_len=384), got -1",
        ),
        (dict(device="gpu"), "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        # what torch.device would refuse with a traceback: a leading zero, a huge index, a non-ASCII digit
        (dict(device="cuda:01"), "device must be auto, cpu, cuda or cuda:N, got 'cuda:01'"),
        (dict(device="cuda:" + "9" * 20), f"device must be auto, cpu, cuda or cuda:N, got 'cuda:{'9' * 20}'"),
        (dict(device="cuda:\u0661"), "device must be auto, cpu, cuda or cuda:N, got 'cuda:\u0661'"),
        (dict(precision="fp8"), "precision must be one of fp32, bf16, fp16, int8, fast, got 'fp8'"),
    ],
)
def test_invalid_settings_fail_before_the_tokenizer(settings, message):
    with pytest.raises(ValueError) as err:  # no config to load exists: refused before touching any file
        QAConfig(**settings)
    assert str(err.value) == message


def test_default_settings_are_valid():
    assert QAConfig().max_seq_len == 384
    assert QAConfig(max_seq_len=16, doc_stride=7).doc_stride == 7
