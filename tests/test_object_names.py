"""Hostile object names as a unit (the emulator normalises ``..`` and ``//`` before we ever see them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from qa_answer.object_names import map_object_name, resolve_inside


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("x.csv", "x.csv"),
        ("a/b/c.csv", "a/b/c.csv"),
        ("sp ace/é 東京.csv", "sp ace/é 東京.csv"),
        ("..hidden.csv", "..hidden.csv"),  # a name starting with dots is not a path component
        (".x.csv", ".x.csv"),
    ],
)
def test_plain_names_are_kept(name, path):
    mapped = map_object_name(name)
    assert (mapped.path, mapped.reason) == (path, None)


@pytest.mark.parametrize(
    ("name", "path", "reason"),
    [
        ("/etc/passwd.csv", "etc/passwd.csv", "empty or '.' path components dropped"),
        ("a//b.csv", "a/b.csv", "empty or '.' path components dropped"),
        ("./a/./b.csv", "a/b.csv", "empty or '.' path components dropped"),
        ("..\\..\\win.csv", ".._.._win.csv", "backslashes replaced by '_'"),
        (
            "\\\\server\\share\\x.csv",
            "__server_share_x.csv",
            "backslashes replaced by '_'",
        ),
        (
            "/a\\b//c.csv",
            "a_b/c.csv",
            "backslashes replaced by '_'; empty or '.' path components dropped",
        ),
        ("UPPER.CSV", "UPPER.csv", "extension '.CSV' written as '.csv'"),
        (
            "Dir.CSV/mixed.Csv",
            "Dir_csv/mixed.csv",
            "folder name(s) ending in .csv renamed to *_csv: 'Dir.CSV'; extension '.Csv' written as '.csv'",
        ),
        (
            "reports.csv/2024/part1.csv",
            "reports_csv/2024/part1.csv",
            "folder name(s) ending in .csv renamed to *_csv: 'reports.csv'",
        ),
    ],
)
def test_harmless_oddities_are_normalised_with_a_reason(name, path, reason):
    mapped = map_object_name(name)
    assert (mapped.path, mapped.reason) == (path, reason)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x.csv", "object name has a '..' path component"),
        ("a/../../x.csv", "object name has a '..' path component"),
        ("a/..", "object name has a '..' path component"),
        ("/../../etc/cron.d/x.csv", "object name has a '..' path component"),
        ("a\x00b.csv", "object name contains control character U+0000"),
        ("line\nbreak.csv", "object name contains control character U+000A"),
        ("cr\r.csv", "object name contains control character U+000D"),
        ("esc\x1b[31m.csv", "object name contains control character U+001B"),
        ("del\x7f.csv", "object name contains control character U+007F"),
        ("c1\x85.csv", "object name contains control character U+0085"),
        ("bad\udcff.csv", "object name is not valid UTF-8"),
        ("//", "object name has no file name"),
        ("a/" + "x" * 252 + ".csv", "object name has a path component longer than 255 bytes"),
        ("é" * 126 + ".csv", "object name has a path component longer than 255 bytes"),
        ("/".join(["d" * 200] * 21) + ".csv", "object name is longer than 4096 bytes"),
    ],
)
def test_dangerous_names_are_rejected_with_a_reason(name, reason):
    mapped = map_object_name(name)
    assert (mapped.path, mapped.reason) == (None, reason)


def test_a_component_of_exactly_255_bytes_is_allowed():
    name = "x" * 251 + ".csv"
    assert map_object_name(name).path == name


def test_every_mapped_path_stays_inside_the_output_folder(tmp_path: Path):
    hostile = ["/abs.csv", "a//b.csv", "..\\x.csv", "./.csv", "a/./b/../c.csv", "../../x.csv", "...csv"]
    for name in hostile:
        mapped = map_object_name(name)
        if mapped.path is not None:
            target = resolve_inside(tmp_path, mapped.path)
            assert tmp_path.resolve() in target.parents


def test_resolve_inside_refuses_symlink_escapes(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    assert resolve_inside(root, "sub/x.csv") == root.resolve() / "sub" / "x.csv"
    with pytest.raises(ValueError, match="resolves outside"):
        resolve_inside(root, "link/x.csv")
    with pytest.raises(ValueError, match="resolves outside"):
        resolve_inside(root, "../x.csv")
