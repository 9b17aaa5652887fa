"""Typed settings: flags win over the environment, empty variables count as unset, errors name the source."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from qa_answer.errors import SettingsError
from qa_answer.qa_config import QAConfig
from qa_answer.settings import (
    EMULATOR_PROJECT,
    QA_OPTIONS,
    GCSLocation,
    answer_settings,
    ingest_settings,
)


def flags(tmp_path: Path, **values) -> dict:
    return {"in_dir": str(tmp_path), "out_dir": str(tmp_path / "out"), **values}


def test_every_qa_config_field_has_a_flag_and_a_variable():
    assert [name for name, *_ in QA_OPTIONS] == [f.name for f in fields(QAConfig)]
    assert all(variable == "QA_" + name.upper() for name, _flag, variable, _kind in QA_OPTIONS)


def test_defaults_come_from_qa_config(tmp_path):
    settings = answer_settings(flags(tmp_path), {})
    assert settings.qa == QAConfig()
    assert (settings.chunk_rows, settings.fail_on_reject) == (256, False)


def test_environment_then_flags(tmp_path):
    env = {
        "QA_MODEL": " /models/x ",
        "QA_BATCH_SIZE": "8",
        "QA_MAX_SEQ_LEN": "256",
        "QA_DOC_STRIDE": "64",
        "QA_MAX_ANSWER_LEN": "30",
        "QA_DEVICE": "cpu",
        "QA_PRECISION": "bf16",
        "QA_CHUNK_ROWS": "100",
        "QA_FAIL_ON_REJECT": "yes",
    }
    settings = answer_settings(flags(tmp_path), env)
    assert settings.qa == QAConfig("/models/x", 8, 256, 64, 30, "cpu", "bf16")
    assert (settings.chunk_rows, settings.fail_on_reject) == (100, True)
    settings = answer_settings(flags(tmp_path, batch_size="4", doc_stride="32", chunk_rows="7"), env)
    assert (settings.qa.batch_size, settings.qa.doc_stride, settings.chunk_rows) == (4, 32, 7)


def test_empty_variables_count_as_unset(tmp_path):
    env = {name: "" for *_, name, _kind in QA_OPTIONS} | {"QA_CHUNK_ROWS": " ", "QA_FAIL_ON_REJECT": ""}
    assert answer_settings(flags(tmp_path), env).qa == QAConfig()


def test_bad_flag_value_names_the_flag(tmp_path):
    with pytest.raises(SettingsError, match=r"^invalid settings: --max-seq-len must be an integer, got 'x'$"):
        answer_settings(flags(tmp_path, max_seq_len="x"), {})


def test_ingest_settings_for_emulator_and_local_folder(tmp_path):
    settings = ingest_settings(
        {"source": "gs://bkt/a/b/", "out_dir": "/pfs/out"}, {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:1"}
    )
    assert settings.source == GCSLocation("bkt", "a/b/")
    assert (settings.emulator_host, settings.project) == ("http://127.0.0.1:1", EMULATOR_PROJECT)
    local = ingest_settings({"source": str(tmp_path), "out_dir": "o"}, {"GOOGLE_CLOUD_PROJECT": "p"})
    assert (local.source, local.project) == (tmp_path, "p")
