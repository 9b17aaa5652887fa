"""``qa-answer ingest`` with the real GCS client against fake-gcs-server, and from a local folder."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import google_crc32c
import pytest
import requests
import urllib3
from deep_paths import deep_file
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from qa_answer.cli import main
from qa_answer.errors import SettingsError, SourceError
from qa_answer.ingest import mirror_source
from qa_answer.settings import GCSLocation, parse_gcs_url
from qa_answer.sources import (
    ChecksumMismatch,
    GCSSource,
    LocalFolderSource,
    SourceObject,
    download_checksum,
)

CSV = b"question,context\nWho?,Ada wrote it.\n"


def upload(bucket, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        bucket.blob(name).upload_from_string(data, content_type="text/csv")


def snapshot(bucket) -> list[tuple]:
    """Everything about the bucket's objects that a write of any kind would change."""
    return sorted(
        (b.name, b.generation, b.metageneration, b.crc32c, b.md5_hash, b.size, b.updated)
        for b in bucket.client.list_blobs(bucket.name)
    )


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_mirrors_only_csvs_under_the_prefix_with_nested_paths(gcs_bucket, tmp_path, capsys):
    upload(
        gcs_bucket,
        {
            "data/a.csv": CSV,
            "data/sub/b.csv": CSV + b"Where?,In Paris.\n",
            "data/sub/deep/c.CSV": b"question,context\n",
            "data/notes.txt": b"not a csv",
            "data/sub/": b"",  # a console-made "folder" placeholder
            "data2/x.csv": CSV,  # shares the prefix text, not the folder
            "other/y.csv": CSV,
        },
    )
    before = snapshot(gcs_bucket)
    out = tmp_path / "out"

    assert main(["ingest", f"gs://{gcs_bucket.name}/data", str(out)]) == 0

    assert files_under(out) == {
        "a.csv": CSV,
        "sub/b.csv": CSV + b"Where?,In Paris.\n",
        "sub/deep/c.csv": b"question,context\n",  # saved lower-case, so the /**.csv glob matches it
    }
    stdout = capsys.readouterr().out
    assert f"ingest summary: source=gs://{gcs_bucket.name}/data/ files=3 skipped=0 bytes=" in stdout
    assert snapshot(gcs_bucket) == before


@pytest.mark.parametrize("suffix", ["", "/", "//"])
def test_empty_prefix_or_trailing_slash_mirrors_the_whole_bucket(gcs_bucket, tmp_path, suffix):
    upload(gcs_bucket, {"top.csv": CSV, "in/side.csv": CSV, "in/side.json": b"{}"})
    out = tmp_path / "out"
    assert main(["ingest", f"gs://{gcs_bucket.name}{suffix}", str(out)]) == 0
    assert sorted(files_under(out)) == ["in/side.csv", "top.csv"]


def test_hostile_names_that_survive_upload_stay_inside_out_dir(gcs_bucket, tmp_path, capsys):
    upload(
        gcs_bucket,
        {
            "in/back\\slash.csv": CSV,
            "in/ctl\x01.csv": CSV,
            "in/new\nline.csv": CSV,
            "in/sp ace é.csv": CSV,
            "in/x_y.csv": CSV,
            "in/x\\y.csv": b"question,context\nsame,target\n",  # maps to x_y.csv too: skipped
        },
    )
    before = snapshot(gcs_bucket)
    out = tmp_path / "out"

    assert main(["ingest", f"gs://{gcs_bucket.name}/in/", str(out)]) == 0

    assert files_under(out) == {"back_slash.csv": CSV, "sp ace é.csv": CSV, "x_y.csv": CSV}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    captured = capsys.readouterr()
    assert "files=3 skipped=3" in captured.out
    lines = captured.err.splitlines()  # one log line per event, names shown escaped
    src = f"gs://{gcs_bucket.name}/in/"
    control = "object name contains control character"
    assert lines == [
        "qa-answer: INFO: saving 'back\\\\slash.csv' as 'back_slash.csv': backslashes replaced by '_'",
        f"qa-answer: WARNING: skipping 'ctl\\x01.csv' from {src}: {control} U+0001",
        f"qa-answer: WARNING: skipping 'new\\nline.csv' from {src}: {control} U+000A",
        f"qa-answer: WARNING: skipping 'x\\\\y.csv' from {src}: it maps to 'x_y.csv', the path of 'x_y.csv'",
    ]
    assert snapshot(gcs_bucket) == before


class InMemorySource:
    """A test QuestionSource for name layouts no file-system-backed store can hold (x.csv and x.csv/y.csv)."""

    url = "mem://"

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def list_csv(self):
        return iter(SourceObject(name, len(data)) for name, data in self.objects.items())  # as given

    def fetch(self, obj, dest):
        dest.write_bytes(self.objects[obj.name])
        return obj


def test_folders_named_like_csv_files_are_renamed_so_no_file_becomes_two_datums(tmp_path, caplog):
    """/**.csv matches folders too: "f.csv/g.csv" saved as is would be a datum inside the datum "f.csv/"."""
    caplog.set_level("INFO")
    source = InMemorySource({"f.csv": CSV, "f.csv/g.csv": CSV, "d.csv/e.csv": CSV, "d.csv": CSV})
    summary = mirror_source(source, tmp_path / "out")
    assert (summary.files, summary.skipped) == (4, 0)
    assert files_under(tmp_path / "out") == {
        "f.csv": CSV,
        "f_csv/g.csv": CSV,
        "d_csv/e.csv": CSV,
        "d.csv": CSV,
    }
    assert (
        "saving 'f.csv/g.csv' as 'f_csv/g.csv': folder name(s) ending in .csv renamed to *_csv: 'f.csv'"
        in [r.getMessage() for r in caplog.records]
    )


def test_upper_case_extensions_are_saved_lower_case_and_an_exact_name_wins_a_clash(tmp_path, caplog):
    """The answering spec's glob (/**.csv) is case-sensitive: x.CSV must land as x.csv to become a datum."""
    source = InMemorySource({"A.CSV": CSV, "b.Csv": b"q,c\n", "b.csv": CSV})
    summary = mirror_source(source, tmp_path / "out")
    assert (summary.files, summary.skipped) == (2, 1)
    assert files_under(tmp_path / "out") == {"A.csv": CSV, "b.csv": CSV}
    assert any(r.getMessage().startswith("skipping 'b.Csv'") for r in caplog.records)


def client_corrupting_downloads(gcs_server):
    """A real client whose HTTP session flips one bit of every media download: bytes altered in transit."""
    session = requests.Session()

    def flip_first_bit(response, *args, **kwargs):
        if "alt=media" in response.url:
            body = bytearray(response.raw.read())
            body[0] ^= 0x01
            response.raw = urllib3.HTTPResponse(
                body=io.BytesIO(bytes(body)),
                headers=response.raw.headers,
                status=response.status_code,
                preload_content=False,
            )
        return response

    session.hooks["response"].append(flip_first_bit)
    return storage.Client(
        credentials=AnonymousCredentials(),
        project="test",
        client_options={"api_endpoint": gcs_server.url},
        _http=session,
    )


def test_download_checksum_is_verified_against_the_listed_generation(gcs_server, gcs_bucket, tmp_path):
    upload(gcs_bucket, {"p/a.csv": CSV})
    source = GCSSource(gcs_bucket.client, gcs_bucket.name, "p/")
    [obj] = list(source.list_csv())
    good = tmp_path / "good.csv"
    assert source.fetch(obj, good) is not None
    assert good.read_bytes() == CSV

    source = GCSSource(client_corrupting_downloads(gcs_server), gcs_bucket.name, "p/")
    [obj] = list(source.list_csv())
    with pytest.raises(SourceError) as error:
        source.fetch(obj, tmp_path / "bad.csv")
    received = base64.b64encode(google_crc32c.Checksum(bytes([CSV[0] ^ 0x01]) + CSV[1:]).digest()).decode()
    stored = gcs_bucket.get_blob("p/a.csv").crc32c
    assert str(error.value) == (
        f"checksum mismatch downloading gs://{gcs_bucket.name}/'p/a.csv' (3 attempts): "
        f"crc32c of the downloaded bytes is {received}, the object's is {stored}"
    )
    assert not (tmp_path / "bad.csv").exists()


def test_object_replaced_after_listing_is_fetched_at_its_new_generation(gcs_bucket, tmp_path):
    upload(gcs_bucket, {"a.csv": CSV})
    source = GCSSource(gcs_bucket.client, gcs_bucket.name, "")
    [obj] = list(source.list_csv())
    listed_generation = obj.handle.generation
    newer = CSV + b"Later?,Yes.\n"
    upload(gcs_bucket, {"a.csv": newer})
    dest = tmp_path / "a.csv"
    fetched = source.fetch(obj, dest)
    assert fetched is not None and fetched.handle.generation != listed_generation
    assert dest.read_bytes() == newer


def test_download_checksum_falls_back_to_md5_and_refuses_no_checksum():
    assert download_checksum(crc32c="mnG7TA==", md5="XUFAKrxLKna5cZ2REBfFkg==") == "crc32c"
    assert download_checksum(crc32c=None, md5="XUFAKrxLKna5cZ2REBfFkg==") == "md5"
    with pytest.raises(ChecksumMismatch, match="neither a crc32c nor an md5"):
        download_checksum(crc32c=None, md5=None)


def test_missing_bucket_is_one_clear_error(gcs_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    assert main(["ingest", "gs://no-such-bucket-h2/x", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        "qa-answer: error: bucket 'no-such-bucket-h2' not found (listing gs://no-such-bucket-h2/x/)\n"
    )


def test_local_folder_source(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "x.csv").write_bytes(CSV)
    (src / "top.csv").write_bytes(b"question,context\n")
    (src / "skip.txt").write_text("no")
    out = tmp_path / "out"
    assert main(["ingest", str(src), str(out)]) == 0
    assert files_under(out) == {"a/b/x.csv": CSV, "top.csv": b"question,context\n"}
    assert f"ingest summary: source={src} files=2 skipped=0 bytes=" in capsys.readouterr().out
    assert (src / "a" / "b" / "x.csv").read_bytes() == CSV  # the source is left alone


def test_a_local_file_whose_path_is_over_path_max_is_a_counted_skip_named_by_its_stand_in(tmp_path, caplog):
    """fetch copies by path name, which cannot reach the file: it is reported and counted, never dropped."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "top.csv").write_bytes(CSV)
    relative = deep_file(src, 17)
    assert len(os.fsencode(src)) + len(relative) > 4096
    summary = mirror_source(LocalFolderSource(src), tmp_path / "out")
    assert (summary.files, summary.skipped) == (1, 1)
    assert files_under(tmp_path / "out") == {"top.csv": CSV}
    stand_in = "d" * 50 + "..." + hashlib.sha256(relative).hexdigest()[:16]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"skipping {stand_in!r} from {src}: the path is longer than PATH_MAX (4096 bytes): move the file"
    ]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["ingest", "gs://", "out"],
            "no bucket in 'gs://': expected gs://BUCKET[/PREFIX] (is GCS_BUCKET set?)",
        ),
        (["ingest", "gs://Bad_Bucket/x", "out"], "invalid bucket name 'Bad_Bucket' in 'gs://Bad_Bucket/x'"),
        (
            ["ingest", "s3://bucket/x", "out"],
            "unsupported source scheme 's3://': use gs://BUCKET[/PREFIX] or a local folder",
        ),
        (["ingest", "/no/such/folder", "out"], "SOURCE '/no/such/folder' is not a folder"),
    ],
)
def test_bad_sources_give_one_clear_line(argv, error, capsys):
    assert main(argv) == 1
    assert capsys.readouterr().err == f"qa-answer: error: {error}\n"


def test_missing_credentials_file_is_named(tmp_path, capsys):
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key.json")}
    assert main(["ingest", "gs://bucket/x", str(tmp_path / "out")], env=env) == 1
    assert capsys.readouterr().err == (
        "qa-answer: error: GOOGLE_APPLICATION_CREDENTIALS points to "
        f"'{tmp_path / 'key.json'}', which is not a file\n"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{}", "The file {key} does not have a valid type."),
        ("not json", "File {key} is not a valid json file."),
        (
            '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nSECRET\\n'
            '-----END PRIVATE KEY-----\\n", "client_email": "a@b.c", "token_uri": "https://x"}',
            "Failed to load service account credentials from {key}",
        ),
    ],
)
def test_unusable_credentials_file_is_named_without_its_content(content, reason, tmp_path, capsys):
    key = tmp_path / "key.json"
    key.write_text(content)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key)}
    with pytest.MonkeyPatch.context() as patch:  # google-auth reads the real environment
        patch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        patch.delenv("STORAGE_EMULATOR_HOST", raising=False)
        assert main(["ingest", "gs://bucket/x", str(tmp_path / "out")], env=env) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"qa-answer: error: cannot use GOOGLE_APPLICATION_CREDENTIALS={key}: ")
    assert reason.format(key=key) in err
    assert "SECRET" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("gs://b-1", "b-1", ""),
        ("gs://b-1/", "b-1", ""),
        ("gs://b-1/a/b", "b-1", "a/b/"),
        ("gs://b-1//a//b//", "b-1", "a/b/"),
        ("gs://my.bucket_x/q", "my.bucket_x", "q/"),
    ],
)
def test_parse_gcs_url(url, bucket, prefix):
    assert parse_gcs_url(url) == GCSLocation(bucket, prefix)
    with pytest.raises(SettingsError):
        parse_gcs_url("gs:///x")


def test_ingest_subprocess_does_not_import_torch(gcs_bucket, gcs_server, tmp_path):
    upload(gcs_bucket, {"q/a.csv": CSV})
    out = tmp_path / "out"
    code = (
        "import sys; from qa_answer.cli import main; "
        f"rc = main(['ingest', 'gs://{gcs_bucket.name}/q', {str(out)!r}]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules); "
        "print('heavy', heavy); sys.exit(rc)"
    )
    env = {**os.environ, **gcs_server.env}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "heavy []" in result.stdout
    assert result.stderr == ""  # no warnings or noise: logs are for events only
    assert files_under(out) == {"a.csv": CSV}
