"""pachyderm-local against Pachyderm 2.x's own behaviour: specs parsed as pachctl parses them (protojson into
CreatePipelineRequest), pachd's create-time checks and defaults, and globs with ohmyglob's semantics.

The glob cases are those of Pachyderm's TestGlobFile, TestGlobFile2, TestGlobFile3 (pfs/server/testing),
TestIterators and TestJoinTrailingSlash (worker/datum), carried over as facts; the extglob, class and
negation cases were checked against ohmyglob d5b47775 itself."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from fixtures_runner import make_files
from pachyderm_local.cron_spec import CronSpecError, validate_cron_spec
from pachyderm_local.datums import CommitView, plan_datums
from pachyderm_local.globs import GlobError, check_glob, expand_glob, glob_matches
from pachyderm_local.runner import next_tick_name
from pachyderm_local.spec import SpecError, parse_spec, spec_version
from pachyderm_local.store import Store


def spec(**fields) -> dict:
    base = {
        "pipeline": {"name": "p"},
        "input": {"pfs": {"repo": "raw", "glob": "/*"}},
        "transform": {"cmd": ["true"]},
    }
    return {**base, **fields}


# -- specs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (spec(datum_trys=5), 'no field named "datum_trys"'),
        (spec(transform={"cmd": ["true"], "datum_batchng": True}), 'no field named "datum_batchng"'),
        (spec(parallelism_spec={"coefficient": 2}), 'no field named "coefficient"'),
        (spec(datum_timeout="1h30m"), "datum_timeout"),
        (spec(job_timeout="10"), "job_timeout"),
        (spec(details_json="{}"), 'unknown field "details_json"'),
        (spec(maximum_expected_uptime="1h"), "maximum_expected_uptime"),
        (spec(reprocess_spec="always"), "ReprocessSpec must be one of"),
        (spec(datum_tries="three"), "datum_tries"),
        (spec(pipeline={"name": "-p"}), "must start with an alphanumeric character"),
        (
            spec(
                input={"cross": [{"pfs": {"repo": "a", "glob": "/"}}, {"pfs": {"repo": "a", "glob": "/*"}}]}
            ),
            ('name "a" was used more than once'),
        ),
        (spec(input={"pfs": {"repo": "out", "glob": "/"}}), "repos named \"out\" must have 'name' set"),
        (spec(input={"pfs": {"repo": "x", "name": "out", "glob": "/"}}), "input cannot be named out"),
        (
            spec(input={"pfs": {"repo": "raw", "glob": "/*"}, "cron": {"name": "t", "spec": "@daily"}}),
            ("multiple input types set"),
        ),
        (spec(input={"cron": {"name": "t", "spec": "61 * * * *"}}), "End of range (61) above maximum (59)"),
        (spec(input={"pfs": {"repo": "raw", "glob": "/[abc"}}), "unexpected end of input"),
        (spec(transform={"cmd": ["true"], "err_cmd": ["true"]}), "transform.err_cmd is not supported"),
        (spec(output_branch="staging"), "only has the 'master' branch"),
    ],
)
def test_specs_pachctl_refuses_are_refused_naming_the_field(raw, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, "p.json")
    assert message in str(caught.value) and str(caught.value).startswith("p.json: ")


def test_protobuf_camel_case_names_are_accepted():
    parsed = parse_spec(
        spec(
            datumTries=5,
            datumTimeout="90s",
            jobTimeout="1.5s",
            parallelismSpec={"constant": 2},
            reprocessSpec="every_job",
            transform={"cmd": ["true"], "datumBatching": True, "acceptReturnCode": [3]},
        )
    )
    assert (parsed.datum_tries, parsed.datum_timeout_s, parsed.job_timeout_s) == (5, 90.0, 1.5)
    assert parsed.parallelism == 2 and parsed.reprocess_every_job and parsed.datum_batching
    assert parsed.accept_return_code == (3,)
    snake = parse_spec(
        spec(
            datum_tries=5,
            datum_timeout="90s",
            job_timeout="1.5s",
            parallelism_spec={"constant": 2},
            reprocess_spec="every_job",
            transform={"cmd": ["true"], "datum_batching": True, "accept_return_code": [3]},
        )
    )
    assert spec_version(parsed, {}) == spec_version(snake, {})  # one spec, however it is spelled


@pytest.mark.parametrize(("tries", "effective"), [(None, 3), (0, 3), (1, 1), (7, 7), (-2, 1)])
def test_datum_tries_zero_is_pachyderms_default(tries, effective):
    raw = spec() if tries is None else spec(datum_tries=tries)
    assert parse_spec(raw).datum_tries == effective


def test_a_maximum_expected_uptime_duration_is_accepted_and_ignored():
    assert parse_spec(spec(maximum_expected_uptime="3600s")).name == "p"


@pytest.mark.parametrize(
    "good",
    [
        "@never",
        " @never ",
        "@every 5m",
        "@every 1h30m",
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "*/5 * * * *",
        "0 0 1 jan mon",
        "0-30/10 9-17 ? * MON-FRI",
        "0,15,30,45 * * * *",
    ],
)
def test_cron_specs_robfig_accepts(good):
    validate_cron_spec(good)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "Empty spec string"),
        ("@every", "Unrecognized descriptor"),
        ("@every 5", "Failed to parse duration"),
        ("@every 1d", "Failed to parse duration"),
        ("@often", "Unrecognized descriptor"),
        ("* * * *", "Expected exactly 5 fields, found 4"),
        ("0 0 * * * *", "Expected exactly 5 fields, found 6"),
        ("60 * * * *", "End of range (60) above maximum (59)"),
        ("* 24 * * *", "End of range (24) above maximum (23)"),
        ("* * 0 * *", "Beginning of range (0) below minimum (1)"),
        ("* * * 13 *", "End of range (13) above maximum (12)"),
        ("* * * * 7", "End of range (7) above maximum (6)"),
        ("*/0 * * * *", "Step of range should be a positive number"),
        ("5-1 * * * *", "Beginning of range (5) beyond end of range (1)"),
        ("1-2-3 * * * *", "Too many hyphens"),
        ("*/2/2 * * * *", "Too many slashes"),
        ("x * * * *", "Failed to parse int from x"),
    ],
)
def test_cron_specs_robfig_refuses(bad, reason):
    with pytest.raises(CronSpecError, match=re.escape(reason)):
        validate_cron_spec(bad)


def test_the_projects_specs_parse(tmp_path):
    for path in sorted((Path(__file__).resolve().parent.parent / "specs").rglob("*.json")):
        parsed = parse_spec(json.loads(path.read_text()), str(path))
        assert parsed.datum_tries == 3 and parsed.datum_timeout_s in (1800.0, 3600.0)


# -- globs -------------------------------------------------------------------------------------------

GLOB_FILE = [f"file{i}" for i in range(100)] + [f"dir1/file{i}" for i in range(100)]
GLOB_FILE += [f"dir2/dir3/file{i}" for i in range(100)]


def files_matched(glob: str, files: list[str]) -> list[str]:
    """The files a glob's datums contain (GetFileTAR of a glob)."""
    matched = expand_glob(glob, files)
    return sorted(f for f in files if any(f == m[1:] or f.startswith(m[1:] + "/") for m in matched))


@pytest.mark.parametrize(
    ("glob", "count"),
    [("*", 102), ("file*", 100), ("dir1/*", 100), ("dir2/dir3/*", 100), ("*/*", 101), ("**", 303)],
)
def test_glob_file_counts(glob, count):
    """TestGlobFile: GlobFileAll counts over file<N>, dir1/file<N>, dir2/dir3/file<N>."""
    assert len(expand_glob(glob, GLOB_FILE)) == count


def test_glob_file_contents():
    """TestGlobFile: GetFileTAR of a glob."""
    assert len(files_matched("*", GLOB_FILE)) == 300
    assert len(files_matched("dir2/dir3/file1?", GLOB_FILE)) == 10
    assert len(files_matched("**file1?", GLOB_FILE)) == 30
    assert files_matched("**file1", GLOB_FILE) == ["dir1/file1", "dir2/dir3/file1", "file1"]
    assert expand_glob("dir?", GLOB_FILE) == ["/dir1", "/dir2"]
    assert expand_glob("", GLOB_FILE) == ["/"]


def test_glob_file_2():
    files = [str(i) for i in range(100)]
    assert expand_glob("/1*", files) == sorted(f"/{f}" for f in files if f.startswith("1"))


def test_glob_file_3():
    files = ["dir1/file1.1", "dir1/file1.2", "dir2/file2.1", "dir2/file2.2"]
    assert expand_glob("**.2", files) == ["/dir1/file1.2", "/dir2/file2.2"]
    assert expand_glob("/dir1/*", files) == ["/dir1/file1.1", "/dir1/file1.2"]
    assert expand_glob("/*", files) == ["/dir1", "/dir2"]
    assert expand_glob("/", files) == ["/"]


FOO = [f"foo{i}" for i in range(50)]


def test_iterators_basic_and_zero_datums():
    assert expand_glob("!(**)", FOO) == []
    assert expand_glob("/foo?1", FOO) == ["/foo11", "/foo21", "/foo31", "/foo41"]
    assert expand_glob("/foo*2", FOO) == ["/foo12", "/foo2", "/foo22", "/foo32", "/foo42"]


def _pfs(glob: str, name: str) -> dict:
    return {"pfs": {"repo": "data", "name": name, "glob": glob}}


def test_iterators_union_cross_and_empty_cross():
    commits = {"data": CommitView("c", {f: "h" for f in FOO})}

    def datums(input_: dict) -> list[str]:
        node = parse_spec(spec(input=input_)).input
        return ["".join(i.path for i in d.inputs) for d in plan_datums(node, commits)]

    in1, in2 = _pfs("/foo?1", "in1"), _pfs("/foo*2", "in2")
    union = datums({"union": [in1, {"pfs": {**in2["pfs"], "name": "in1"}}]})
    expected = ["/foo11", "/foo12", "/foo2", "/foo21", "/foo22", "/foo31", "/foo32", "/foo41", "/foo42"]
    assert sorted(union) == expected
    cross = datums({"cross": [in1, in2]})
    assert cross[:5] == ["/foo11/foo12", "/foo11/foo2", "/foo11/foo22", "/foo11/foo32", "/foo11/foo42"]
    assert len(cross) == 20 and cross[-1] == "/foo41/foo42"
    assert datums({"cross": [in1, _pfs("!(**)", "in0"), in2]}) == []
    assert datums({"cross": [{"cross": [in1, _pfs("!(**)", "in0")]}, _pfs("/foo?1", "in3")]}) == []


def test_join_trailing_slash_globs_match_every_file():
    files = [f"foo-{j}" for j in range(10)]
    expected = [f"/foo-{j}" for j in range(10)]
    assert expand_glob("/(*)", files) == expected
    assert expand_glob("/(*)/", files) == expected


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/[^a]*", "/b", True),  # '^' negates, as '!' does
        ("/[^a]*", "/a", False),
        ("/a[!b]c", "/a/c", True),  # a negated class also matches the separator
        ("/a[!b]c", "/abc", False),
        ("/[[:alpha:]]*", "/x1", True),
        ("/[[:alpha:]]*", "/1x", False),
        ("/[[:digit:]]", "/7", True),
        ("/foo(?)1", "/foox1", True),
        ("/foo(?)1", "/foo1", False),
        ("/(*)", "/foo-1", True),
        ("/@(a|b)", "/b", True),
        ("/@(a|b)", "/ab", False),
        ("/!(a)", "/b", True),
        ("/!(a)", "/a", False),
        ("/!(a)", "/a/c", False),
        ("/!(*.csv)", "/a.txt", True),
        ("/!(*.csv)", "/a.csv", False),
        ("/+(a)", "/aaa", True),
        ("/+(a)", "/", False),
        ("/*(a|b)", "/abba", True),
        ("/?(a)b", "/b", True),
        ("/?(a)b", "/aab", False),
        ("/{a.csv,b.txt", "/b.txt", True),  # an unclosed '{' is accepted
        (" /a", "/ /a", True),  # a leading space is kept, as pfsfile.CleanPath keeps it
        (" /a", "/a", False),
    ],
)
def test_ohmyglob_semantics(glob, path, matches):
    assert glob_matches(glob, path) is matches


@pytest.mark.parametrize("bad", ["/[abc", "/^(a)", "/[]", "/a[b"])
def test_globs_ohmyglob_cannot_compile_are_refused(bad):
    with pytest.raises(GlobError):
        check_glob(bad)


# -- list-datum, cron ticks, datum ids ---------------------------------------------------------------


def test_list_datum_shows_the_datums_of_a_spec_without_running_it(pl, tmp_path):
    src = make_files(tmp_path / "src", {rel: rel for rel in ("a.csv", "sub/b.csv", "sub/c.txt")})
    assert pl("put-file", "raw", str(src))[0] == 0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spec(input={"pfs": {"repo": "raw", "glob": "/*"}})))
    code, out, _ = pl("list-datum", "-f", str(path))
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [files for _, files in lines] == ["raw:/a.csv", "raw:/sub/b.csv raw:/sub/c.txt"]
    assert all(len(datum_id) == 64 for datum_id, _ in lines)
    code, out, _ = pl("list-datum", "-f", str(path), "--raw")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in records] == [datum_id for datum_id, _ in lines]
    assert [i["path"] for r in records for i in r["inputs"]] == ["/a.csv", "/sub/"]
    assert [f["path"] for f in records[1]["files"]] == ["/sub/b.csv", "/sub/c.txt"]
    assert Store(pl.root).list_jobs() == []  # nothing ran
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps(spec(input={"pfs": {"repo": "nowhere", "glob": "/*"}})))
    code, _, err = pl("list-datum", "-f", str(missing))
    assert code == 2 and "input repo 'nowhere' does not exist" in err


def test_pach_datum_id_names_the_path_not_the_content(pl, tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("one")
    pl("put-file", "raw:a.csv", str(src))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spec(input={"pfs": {"repo": "raw", "glob": "/*"}})))
    first = json.loads(pl("list-datum", "-f", str(path), "--raw")[1])
    src.write_text("two")
    pl("put-file", "raw:a.csv", str(src))
    second = json.loads(pl("list-datum", "-f", str(path), "--raw")[1])
    assert first["id"] == second["id"] and first["hash"] != second["hash"]


def test_cron_ticks_are_rfc3339_seconds_one_datum_each(pl, tmp_path):
    path = tmp_path / "clock.json"
    script = 'ls /pfs/tick > "/pfs/out/$(basename "$tick")"'
    path.write_text(
        json.dumps(
            spec(
                pipeline={"name": "clock"},
                input={"cron": {"name": "tick", "spec": "@every 5m"}},
                transform={"cmd": ["sh", "-c", script]},
            )
        )
    )
    assert pl("run", str(path))[:2] == (0, "clock: processed=1 skipped=0 failed=0\n")
    assert pl("run", str(path))[:2] == (0, "clock: processed=1 skipped=1 failed=0\n")  # one datum per tick
    ticks = sorted(Store(pl.root).head("clock_tick").files)
    assert len(ticks) == 2 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t) for t in ticks)
    job = Store(pl.root).list_jobs()[-1]
    assert [d.inputs for d in job.datums] == [f"tick:/{ticks[1]}", f"tick:/{ticks[0]}"]
    assert pl("get-file", f"clock:{ticks[1]}")[1] == ticks[1] + "\n"  # /pfs/tick holds its own tick only


def test_next_tick_name_never_repeats_a_tick():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=dt.timezone.utc)
    assert next_tick_name(now, []) == "2026-01-02T03:04:05Z"
    assert next_tick_name(now, ["2026-01-02T03:04:05Z"]) == "2026-01-02T03:04:06Z"
    assert next_tick_name(now, ["2026-01-02T03:09:00Z", "x"]) == "2026-01-02T03:09:01Z"


def test_cross_and_union_children_are_sorted_as_pachd_sorts_them():
    """pps.SortInput runs before names get their default: an unnamed pfs input and a cron sort as ""."""
    parsed = parse_spec(
        spec(
            input={
                "cross": [
                    {"pfs": {"repo": "b", "name": "zeta", "glob": "/"}},
                    {"pfs": {"repo": "c", "name": "alpha", "glob": "/"}},
                    {"pfs": {"repo": "a", "glob": "/"}},
                ]
            }
        )
    )
    assert [child.name for child in parsed.input.children] == ["a", "alpha", "zeta"]
