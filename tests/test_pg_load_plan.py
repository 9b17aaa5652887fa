"""pg_load.plan: which sources are unchanged, added, replaced or deleted, and the scan that finds them."""

from __future__ import annotations

import hashlib
import os

import pytest
from deep_paths import deep_file
from pg_load.plan import InputError, Plan, diff, digest, scan


@pytest.mark.parametrize(
    ("current", "loaded", "expected"),
    [
        ({}, {}, Plan((), (), (), ())),
        ({"a": "1", "b": "2"}, {}, Plan((), ("a", "b"), (), ())),
        ({"a": "1"}, {"a": "1"}, Plan(("a",), (), (), ())),
        ({"a": "1", "b": "9"}, {"a": "1", "b": "2", "c": "3"}, Plan(("a",), (), ("b",), ("c",))),
        ({}, {"a": "1"}, Plan((), (), (), ("a",))),
        ({"new": None, "a": "1"}, {"a": "1"}, Plan(("a",), ("new",), (), ())),  # new sources need no digest
    ],
)
def test_diff_sorts_sources_into_unchanged_added_replaced_deleted(current, loaded, expected):
    assert diff(current, loaded) == expected


def test_plan_noop_and_to_write():
    assert Plan(("a",), (), (), ()).is_noop
    plan = Plan((), ("n",), ("r",), ("d",))
    assert not plan.is_noop and plan.to_write == ("n", "r")


def test_digest_covers_both_files_and_tells_absent_from_empty():
    assert digest(b"x", b"") != digest(b"x", None)
    assert digest(b"ab", b"c") != digest(b"a", b"bc")  # framing: no shifting bytes between files
    assert digest(b"a", b"b") == digest(b"a", b"b")
    assert len(digest(None, None)) == 64


def test_scan_pairs_answers_and_rejected_by_relative_path(tmp_path, caplog):
    for rel in (
        "answers/x.csv",
        "rejected/x.csv",
        "answers/sub/y.csv",
        "rejected/sub/y.csv",
        "answers/notes.txt",
        "answers/UP.CSV",  # `qa-answer answer` run by hand keeps the input's extension
        "rejected/UP.CSV",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    sources = scan(tmp_path)
    assert list(sources) == ["UP.CSV", "sub/y.csv", "x.csv"]
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring {tmp_path}/answers/notes.txt: not a .csv file"
    ]
    assert sources["x.csv"].answers == tmp_path / "answers/x.csv"
    assert sources["sub/y.csv"].rejected == tmp_path / "rejected/sub/y.csv"
    assert sources["x.csv"].read_digest() == digest(b"answers/x.csv", b"rejected/x.csv")
    assert sources["x.csv"].stamp == (
        (13, (tmp_path / "answers/x.csv").stat().st_mtime_ns),
        (14, sources["x.csv"].stamp[1][1]),
    )
    assert sources["x.csv"].unchanged_since_scan()
    (tmp_path / "answers/x.csv").write_bytes(b"rewritten")
    assert not sources["x.csv"].unchanged_since_scan()


def test_scan_refuses_a_folder_that_is_not_answering_output(tmp_path):
    # Mirroring an unrelated folder would delete every row: refuse instead.
    with pytest.raises(InputError, match=r"has neither answers/ nor rejected/"):
        scan(tmp_path)
    with pytest.raises(InputError, match="no such directory"):
        scan(tmp_path / "missing")
    (tmp_path / "answers").mkdir()
    with pytest.raises(InputError, match=r"has answers/ but no rejected/ \(qa-answer writes both\)"):
        scan(tmp_path)
    (tmp_path / "rejected").mkdir()
    assert scan(tmp_path) == {}  # an output of no inputs: the mirror empties, as it should


def test_scan_refuses_a_source_missing_one_of_its_two_files(tmp_path):
    """A lone answers/ file would be loaded as "no rejected rows", deleting the ones loaded before."""
    for rel in ("answers/a.csv", "rejected/a.csv", "answers/b.csv", "rejected/sub/c.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(InputError) as err:
        scan(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: answers/b.csv, rejected/sub/c.csv without the matching answers/ or rejected/ file: "
        "qa-answer writes both files of an input and replaces them as a pair, so a lone file is what a run "
        "stopped while replacing them leaves behind: run qa-answer again"
    )


def test_scan_refuses_a_file_name_that_is_not_utf8_naming_it_escaped(tmp_path):
    """Postgres could not store the name as source_file: one clear error instead of a UnicodeEncodeError."""
    for rel in ("answers/a.csv", "rejected/a.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    for folder in ("answers", "rejected"):
        (tmp_path / folder / "sub").mkdir()
        with open(os.path.join(os.fsencode(tmp_path / folder / "sub"), b"caf\xe9.csv"), "wb") as fh:
            fh.write(b"x")
    with pytest.raises(InputError) as err:
        scan(tmp_path)
    assert str(err.value) == (
        "answers/sub/caf\\xe9.csv: the file name is not valid UTF-8, so it cannot be a source_file; "
        "rename or remove the file (qa-answer never writes such names)"
    )


def test_scan_refuses_a_csv_whose_path_is_over_path_max_naming_it_by_its_stand_in(tmp_path, caplog):
    """qa-answer files such an input under a short stand-in, so a long path means IN_DIR is not its output."""
    for rel in ("answers/a.csv", "rejected/a.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    left_over = deep_file(tmp_path / "answers", 17, name=b".qa-answer-0123.part")
    assert list(scan(tmp_path)) == ["a.csv"]  # a long path that is no .csv is ignored, with a warning
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring {'d' * 50 + '...' + hashlib.sha256(left_over).hexdigest()[:16]!r} under "
        f"{tmp_path}/answers (its path is over PATH_MAX): not a .csv file"
    ]
    relative = deep_file(tmp_path / "rejected", 17)
    assert len(os.fsencode(tmp_path / "rejected")) + len(relative) > 4096
    with pytest.raises(InputError) as err:
        scan(tmp_path)
    stand_in = "d" * 50 + "..." + hashlib.sha256(relative).hexdigest()[:16]
    assert str(err.value) == (
        f"rejected/ holds a file whose path is longer than PATH_MAX (4096 bytes), {stand_in!r} for short: "
        "qa-answer never writes such paths (it files such an input under a short stand-in name); "
        "is IN_DIR the answering step's output?"
    )
