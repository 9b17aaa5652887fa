"""Every spec in specs/ parses with python-pachyderm's strict parser and wires the DAG as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import ParseError
from pachyderm_local.dag import pipeline_order
from pachyderm_local.globs import expand_glob
from pachyderm_local.spec import load_spec
from python_pachyderm.util import parse_dict_pipeline_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"
ALL_SPECS = sorted(SPECS.rglob("*.json"))
# The keys the DB secret template (and so create_secret_db.sh) provides; the spec must consume exactly these.
PG_KEYS = list(json.loads((SPECS.parent / "secrets" / "secret_template_db.json").read_text())["data"])


def _raw(name: str) -> dict:
    return json.loads((SPECS / name).read_text())


def test_the_three_pipelines_and_the_gpu_variant_exist():
    names = sorted(p.relative_to(SPECS).as_posix() for p in ALL_SPECS)
    assert names == ["gcs-ingest.json", "gpu/qa-answer.json", "pg-load.json", "qa-answer.json"]


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.relative_to(SPECS).as_posix())
def test_spec_parses_strictly(path: Path):
    request = parse_dict_pipeline_spec(json.loads(path.read_text()))
    assert request.pipeline.name == path.stem
    assert request.transform.image.split(":")[0] in ("pachyderm-qa-answer", "pachyderm-qa-load")
    assert ":IMAGE_TAG" in request.transform.image


def test_strict_parser_rejects_a_misspelled_field():
    raw = _raw("qa-answer.json")
    raw["paralelism_spec"] = raw.pop("parallelism_spec")
    with pytest.raises(ParseError, match="paralelism_spec"):
        parse_dict_pipeline_spec(raw)


def test_dag_order_is_ingest_answer_load():
    specs = [load_spec(p) for p in sorted(SPECS.glob("*.json"))]
    assert [s.name for s in pipeline_order(specs)] == ["gcs-ingest", "qa-answer", "pg-load"]


def test_ingest_is_a_cron_overwrite_with_the_gcs_secret_mounted():
    raw = _raw("gcs-ingest.json")
    assert raw["input"]["cron"]["overwrite"] is True
    assert raw["transform"]["secrets"] == [{"name": "gcs-credentials", "mount_path": "/var/secrets/gcs"}]
    assert raw["transform"]["env"]["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/gcs/key.json"
    assert raw["transform"]["cmd"][-1].endswith(
        'qa-answer ingest "gs://${GCS_BUCKET}/${GCS_PREFIX}" /pfs/out'
    )


def test_answer_glob_makes_each_csv_its_own_datum_at_any_depth():
    spec = load_spec(SPECS / "qa-answer.json")
    files = ["a.csv", "b.csv", "notes.txt", "team/c.csv", "team/2024/d.csv"]
    assert expand_glob(spec.input.glob, files) == ["/a.csv", "/b.csv", "/team/2024/d.csv", "/team/c.csv"]
    assert spec.cmd == ("qa-answer", "answer", "/pfs/gcs-ingest", "/pfs/out", "--datum-batching")
    assert spec.datum_batching  # one long-lived process per worker: the model is loaded once


def test_load_reads_the_whole_answer_set_with_every_db_secret_as_env():
    raw = _raw("pg-load.json")
    assert raw["input"] == {"pfs": {"repo": "qa-answer", "glob": "/"}}
    assert raw["transform"]["cmd"] == ["pg-load", "/pfs/qa-answer"]
    secrets = raw["transform"]["secrets"]
    assert [s["key"] for s in secrets] == PG_KEYS
    assert all(s["name"] == "pg-credentials" and s["env_var"] == s["key"] for s in secrets)


def test_gpu_variant_differs_only_in_image_resources_precision_device_and_chunk_rows():
    cpu, gpu = _raw("qa-answer.json"), _raw("gpu/qa-answer.json")
    assert gpu["input"] == cpu["input"]
    assert gpu["transform"]["cmd"] == cpu["transform"]["cmd"]
    assert gpu["transform"]["datum_batching"] is cpu["transform"]["datum_batching"] is True
    assert gpu["resource_limits"]["gpu"] == {"type": "nvidia.com/gpu", "number": 1}
    assert gpu["transform"]["env"] == {
        **cpu["transform"]["env"],
        "QA_PRECISION": "bf16",
        "QA_DEVICE": "cuda",
        "QA_CHUNK_ROWS": "2048",  # stages of 256 rows overlap within one model call
    }
    ignored = {"transform", "resource_requests", "resource_limits", "parallelism_spec", "description"}
    assert {k: v for k, v in gpu.items() if k not in ignored} == {
        k: v for k, v in cpu.items() if k not in ignored
    }
