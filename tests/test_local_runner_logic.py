"""Pure parts of pachyderm-local: Pachyderm glob semantics, datum planning and hashing, DAG order,
output merging, /pfs rewriting and env precedence."""

from __future__ import annotations

import pytest
from pachyderm_local.dag import downstream_of, pipeline_order
from pachyderm_local.datums import CommitView, plan_datums, split_done
from pachyderm_local.envs import EnvFileError, LocalEnv, job_env, parse_assignments, parse_env_file
from pachyderm_local.globs import GlobError, compile_glob, expand_glob, files_under, glob_matches
from pachyderm_local.outputs import merge_outputs
from pachyderm_local.pathmap import PathMap, UnsafePathError
from pachyderm_local.spec import SpecError, parse_spec, spec_version

FILES = ["a.csv", "b.txt", "sub/c.csv", "sub/deep/d.csv", "other/e.csv"]


@pytest.mark.parametrize(
    ("glob", "expected"),
    [
        ("/", ["/"]),
        ("", ["/"]),
        ("/*", ["/a.csv", "/b.txt", "/other", "/sub"]),
        ("*", ["/a.csv", "/b.txt", "/other", "/sub"]),
        ("/*/*", ["/other/e.csv", "/sub/c.csv", "/sub/deep"]),
        # '**' crosses '/', and directories are candidates too (Pachyderm matches files and dirs).
        (
            "/**",
            [
                "/a.csv",
                "/b.txt",
                "/other",
                "/other/e.csv",
                "/sub",
                "/sub/c.csv",
                "/sub/deep",
                "/sub/deep/d.csv",
            ],
        ),
        ("/**.csv", ["/a.csv", "/other/e.csv", "/sub/c.csv", "/sub/deep/d.csv"]),
        # ohmyglob's '**' is not zero-or-more directories: '/**/' needs at least one folder.
        ("/**/*.csv", ["/other/e.csv", "/sub/c.csv", "/sub/deep/d.csv"]),
        ("/*.csv", ["/a.csv"]),
        ("/sub/*", ["/sub/c.csv", "/sub/deep"]),
        ("/{sub,other}", ["/other", "/sub"]),
        ("/?.csv", ["/a.csv"]),
        ("/[ab].*", ["/a.csv", "/b.txt"]),
        ("/[!a]*", ["/b.txt", "/other", "/sub"]),
        ("/nothing/*", []),
        ("/sub//", ["/sub"]),
    ],
)
def test_glob_expansion_matches_pachyderm(glob, expected):
    assert expand_glob(glob, FILES) == expected


def test_star_never_crosses_a_slash_and_root_only_matches_slash():
    assert not glob_matches("/*", "/sub/c.csv")
    assert glob_matches("/**", "/sub/c.csv")
    assert not glob_matches("/**", "/")
    assert glob_matches("/", "/")
    assert glob_matches("/sub", "/sub/")


@pytest.mark.parametrize("bad", ["/[abc", "/^(a)", "/[]"])
def test_a_glob_ohmyglob_cannot_compile_is_an_error(bad):
    with pytest.raises(GlobError):
        compile_glob(bad)


def test_an_unclosed_brace_is_accepted_as_ohmyglob_does():
    assert expand_glob("/{a.csv,b.txt", FILES) == ["/a.csv", "/b.txt"]


def test_a_directory_datum_holds_everything_below_it():
    assert files_under("/sub", FILES) == ["sub/c.csv", "sub/deep/d.csv"]
    assert files_under("/a.csv", FILES) == ["a.csv"]
    assert files_under("/", FILES) == sorted(FILES)
    assert files_under("/su", FILES) == []


def _spec(name, input_, **extra):
    raw = {"pipeline": {"name": name}, "input": input_, "transform": {"cmd": ["true"], **extra}}
    return parse_spec(raw, f"{name}.json")


def _pfs(repo, glob="/*", name=None):
    return {"pfs": {"repo": repo, "glob": glob, **({"name": name} if name else {})}}


def test_dag_order_follows_inputs_not_argument_order():
    specs = [
        _spec("report", {"cross": [_pfs("clean"), _pfs("stats")]}),
        _spec("stats", _pfs("clean")),
        _spec("clean", _pfs("raw")),
        _spec("audit", _pfs("raw")),
    ]
    assert [s.name for s in pipeline_order(specs)] == ["audit", "clean", "stats", "report"]
    assert downstream_of("clean", specs) == {"stats", "report"}


def test_dag_cycle_and_duplicate_names_are_errors():
    with pytest.raises(SpecError, match="cycle"):
        pipeline_order([_spec("a", _pfs("b")), _spec("b", _pfs("a"))])
    with pytest.raises(SpecError, match="defined twice"):
        pipeline_order([_spec("a", _pfs("x")), _spec("a", _pfs("y"))])


def test_unsupported_inputs_are_named():
    with pytest.raises(SpecError, match="join"):
        _spec("p", {"join": [_pfs("a"), _pfs("b")]})
    assert _spec("p", _pfs("a"), datum_batching=True).datum_batching  # supported since datum batching
    assert not _spec("p", _pfs("a")).datum_batching


def test_datum_id_depends_on_content_and_path_not_on_the_commit():
    spec = _spec("p", _pfs("raw", "/*"))
    first = plan_datums(spec.input, {"raw": CommitView("c1", {"a.csv": "h1", "b.csv": "h2"})})
    again = plan_datums(spec.input, {"raw": CommitView("c2", {"a.csv": "h1", "b.csv": "h2"})})
    edited = plan_datums(spec.input, {"raw": CommitView("c3", {"a.csv": "h1", "b.csv": "h3"})})
    moved = plan_datums(spec.input, {"raw": CommitView("c4", {"x.csv": "h1", "b.csv": "h2"})})
    assert [d.id for d in first] == [d.id for d in again]
    assert first[0].id == edited[0].id and first[1].id != edited[1].id
    assert first[0].id not in {d.id for d in moved}
    assert first[0].inputs[0].commit_id == "c1" and again[0].inputs[0].commit_id == "c2"
    todo, skip = split_done(edited, {d.id for d in first})
    assert [d.inputs[0].path for d in todo] == ["/b.csv"] and [d.inputs[0].path for d in skip] == ["/a.csv"]


def test_cross_and_union_combine_datums():
    commits = {
        "a": CommitView("ca", {"1": "h1", "2": "h2"}),
        "b": CommitView("cb", {"x": "hx", "y": "hy", "z": "hz"}),
    }
    cross = _spec("p", {"cross": [_pfs("a"), _pfs("b")]})
    union = _spec("p", {"union": [_pfs("a"), _pfs("b")]})
    crossed = plan_datums(cross.input, commits)
    assert len(crossed) == 6 and all(len(d.inputs) == 2 for d in crossed)
    assert len({d.id for d in crossed}) == 6
    assert [d.describe() for d in plan_datums(union.input, commits)] == [
        "a:/1",
        "a:/2",
        "b:/x",
        "b:/y",
        "b:/z",
    ]


def test_spec_version_changes_with_transform_and_spec_env_overrides_only():
    base = _spec("p", _pfs("raw"), env={"QA_MODEL": "m1"})
    assert spec_version(base, {"QA_MODEL": "m1"}) == spec_version(base, {"QA_MODEL": "m1", "PG_HOST": "h"})
    assert spec_version(base, {"QA_MODEL": "m2"}) != spec_version(base, {"QA_MODEL": "m1"})
    other_cmd = parse_spec({**base.raw, "transform": {**base.raw["transform"], "cmd": ["false"]}})
    assert spec_version(other_cmd, {}) != spec_version(base, {})
    new_image = parse_spec({**base.raw, "transform": {**base.raw["transform"], "image": "x:sha2"}})
    assert spec_version(new_image, {}) == spec_version(base, {})
    more_workers = parse_spec({**base.raw, "parallelism_spec": {"constant": 8}})
    assert spec_version(more_workers, {}) == spec_version(base, {})


def test_outputs_merge_and_collisions():
    merged, collisions = merge_outputs([("d1", {"answers/a.csv": "h1"}), ("d2", {"answers/b.csv": "h2"})])
    assert merged == {"answers/a.csv": "h1", "answers/b.csv": "h2"} and collisions == []
    _, collisions = merge_outputs([("d1", {"out.csv": "h1"}), ("d2", {"out.csv": "h1"})])
    assert [(c.path, c.datum_ids) for c in collisions] == [("out.csv", ("d1", "d2"))]
    assert "written by 2 datums" in collisions[0].message()
    _, collisions = merge_outputs([("d1", {"x": "h1"}), ("d2", {"x/y": "h2"})])
    assert [c.path for c in collisions] == ["x"]


def test_pfs_prefix_is_rewritten_only_where_it_is_a_path():
    pm = PathMap.of({"/pfs": "/tmp/box/pfs", "/var/secrets/gcs": "/home/me/gcs"})
    assert pm.apply("/pfs/out") == "/tmp/box/pfs/out"
    assert (
        pm.apply('exec qa-answer ingest "gs://b/p" /pfs/out')
        == 'exec qa-answer ingest "gs://b/p" /tmp/box/pfs/out'
    )
    assert pm.apply('cp "/pfs/in/x" /pfs') == 'cp "/tmp/box/pfs/in/x" /tmp/box/pfs'
    assert pm.apply("OUT=/pfs/out cmd") == "OUT=/tmp/box/pfs/out cmd"
    assert pm.apply("/pfsx /a/pfs/b gs://x/pfs/y") == "/pfsx /a/pfs/b gs://x/pfs/y"
    assert pm.apply("/var/secrets/gcs/key.json") == "/home/me/gcs/key.json"
    with pytest.raises(UnsafePathError):
        PathMap.of({"/pfs": "/tmp/my box/pfs"})


def test_env_file_parsing():
    text = "# comment\nexport A=1\nB = 'two words'\nC=\"x#y\"\nD=v # trailing\n\n"
    assert parse_env_file(text, ".env") == {"A": "1", "B": "two words", "C": "x#y", "D": "v"}
    with pytest.raises(EnvFileError, match=r"\.env:2"):
        parse_env_file("A=1\nnot a line\n", ".env")
    for bad in ("A\n", "1A=x\n", 'A="unterminated\n'):  # no value, not a variable name, open quote
        with pytest.raises(EnvFileError, match=r"^\.env:1: expected KEY=VALUE$"):
            parse_env_file(bad, ".env")
    assert parse_assignments(["K=a=b", "E="]) == {"K": "a=b", "E": ""}


def test_env_precedence_spec_then_files_then_flags_and_secrets():
    spec = _spec(
        "p",
        _pfs("raw"),
        env={
            "QA_MODEL": "hub/model",
            "GCS_BUCKET": "prod",
            "GOOGLE_APPLICATION_CREDENTIALS": "/var/secrets/gcs/k",
        },
        secrets=[
            {"name": "gcs-credentials", "mount_path": "/var/secrets/gcs"},
            {"name": "pg-credentials", "key": "PG_HOST", "env_var": "PG_HOST"},
            {"name": "pg-credentials", "key": "PG_PASSWORD", "env_var": "PG_PASSWORD"},
        ],
    )
    local = LocalEnv(
        process={"PATH": "/bin", "QA_MODEL": "ignored", "PG_HOST": "from-process"},
        files={"GCS_BUCKET": "from-file", "PG_PASSWORD": "s3cret"},
        flags={"GCS_BUCKET": "from-flag"},
    )
    plan = job_env(spec, local, PathMap.of({}))
    assert plan.env["QA_MODEL"] == "hub/model"  # the process environment never overrides spec env
    assert plan.env["GCS_BUCKET"] == "from-flag"
    assert plan.env["PG_HOST"] == "from-process" and plan.env["PG_PASSWORD"] == "s3cret"
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in plan.env
    assert any("GOOGLE_APPLICATION_CREDENTIALS left unset" in n for n in plan.notes)
    assert not any("s3cret" in n for n in plan.notes)
    mapped = LocalEnv(process={}, secret_dirs={"gcs-credentials": "/keys"})
    plan = job_env(spec, mapped, PathMap.of({"/var/secrets/gcs": "/keys"}))
    assert plan.env["GOOGLE_APPLICATION_CREDENTIALS"] == "/keys/k"
    assert any("PG_HOST not found" in n for n in plan.notes)


def test_env_file_keys_for_a_spec_without_secrets_are_taken_and_named():
    spec = _spec("p", _pfs("raw"), env={"QA_MODEL": "hub/model"})
    plan = job_env(spec, LocalEnv(process={}, files={"EXTRA": "x"}, file_names=".env"), PathMap.of({}))
    assert plan.env == {"QA_MODEL": "hub/model", "EXTRA": "x"}
    assert plan.notes == ["taken from .env: EXTRA (values not shown)"]


def test_an_unmapped_secret_mount_is_noted_with_or_without_env_files():
    spec = _spec("p", _pfs("raw"), secrets=[{"name": "gcs", "mount_path": "/var/secrets/gcs"}])
    for files in ({}, {"EXTRA": "x"}):
        plan = job_env(spec, LocalEnv(process={}, files=files), PathMap.of({}))
        assert "secret 'gcs' (mount_path /var/secrets/gcs) has no local folder; skipped" in plan.notes
    mapped = LocalEnv(process={}, secret_dirs={"gcs": "/keys"})
    assert not job_env(spec, mapped, PathMap.of({"/var/secrets/gcs": "/keys"})).notes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("600s", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("2m3.5s", 123.5),
    ],
)
def test_datum_timeout_reads_go_durations(text, seconds):
    from pachyderm_local.spec import duration_seconds

    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1d", "s", "1h 30m", "-5s", "1hh"])
def test_datum_timeout_refuses_what_go_would(text):
    from pachyderm_local.spec import duration_seconds

    assert duration_seconds(text) is None
