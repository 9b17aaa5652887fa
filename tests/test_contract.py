"""The layout every step shares: which files count as CSVs, how they are found, how files are replaced."""

from __future__ import annotations

import os

import pytest
from qa_answer.contract import PendingFile, is_csv_name, walk_csv


def test_csv_names_match_in_any_case_as_text_or_bytes():
    assert [is_csv_name(n) for n in ("a.csv", "A.CSV", "b.Csv", "c.csv.gz", "csv", "d.tsv")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert is_csv_name(b"lat\xe9.CSV") and not is_csv_name(b"lat\xe9.txt")


def test_walk_finds_csvs_in_folder_order_skips_a_folder_and_symlinked_folders(tmp_path):
    top, outside = tmp_path / "top", tmp_path / "outside"
    for rel in ("b/x.csv", "a/y.CSV", "a/notes.txt", "out/answers/z.csv", "z.csv"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("q,c\n")
    (outside / "secret.csv").parent.mkdir()
    (outside / "secret.csv").write_text("q,c\n")
    (top / "linked").symlink_to(outside, target_is_directory=True)
    (top / "link.csv").symlink_to(top / "z.csv")
    with open(os.path.join(os.fsencode(top), b"caf\xe9.csv"), "wb"):
        pass
    others: list[bytes] = []
    found = [(f.rel, f.path) for f in walk_csv(top, skip=top / "out", other=others.append)]
    rels = [rel for rel, _ in found]
    assert sorted(rels[:3]) == [b"caf\xe9.csv", b"link.csv", b"z.csv"]  # the top folder's files first
    assert rels[3:] == [b"a/y.CSV", b"b/x.csv"]
    assert others == [b"a/notes.txt"]
    assert all(path == os.path.join(os.fsencode(top), rel) for rel, path in found)


def test_walk_follows_the_top_folder_s_own_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.csv").write_text("q,c\n")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    [found] = walk_csv(tmp_path / "link")
    assert (found.rel, found.path) == (b"a.csv", os.fsencode(tmp_path / "real" / "a.csv"))


def test_a_pending_file_replaces_its_target_only_when_committed(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old")
    with PendingFile(target, ".test-") as pending:
        pending.path.write_text("half")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.csv"]
    with PendingFile(target, ".test-") as pending:
        assert pending.path.name.startswith(".test-") and pending.path.suffix == ".part"
        pending.path.write_text("new")
        pending.commit()
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["x.csv"]
    with pytest.raises(RuntimeError), PendingFile(target, ".test-") as pending:
        pending.path.write_text("failed")
        raise RuntimeError
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["x.csv"]
