"""Pachyderm 2.x glob matching (pure): which paths of a commit are datums for a glob.

Pachyderm cleans a pfs glob (``pfsfile.CleanPath``), compiles it with ohmyglob (d5b47775) using ``/`` as the
separator, and matches it against every file *and* directory of the input commit, directories without
their trailing slash; only paths starting with the glob's literal prefix (``storage.GlobLiteralPrefix``)
are candidates, and the glob ``/`` alone matches the root. ohmyglob turns a glob into a regular
expression; this module is a port of its lexer, parser and compiler, so the regular expression is the
same one (Python's ``re`` runs it as regexp2 does: both are backtracking engines with the same syntax for
what ohmyglob emits). That gives ohmyglob's exact semantics, quirks included: ``*`` stays in one path
segment, ``**`` crosses segments, ``[!a]`` and ``[^a]`` are negated classes that *also* match ``/``,
``[[:alpha:]]`` classes, ``{a,b}`` alternation (an unclosed ``{`` is accepted), and the extglob captures
``@(a|b)``, ``*(a)``, ``+(a)``, ``?(a)``, ``!(a)`` and ``(a)``. A glob ohmyglob cannot compile
(an unclosed ``[``, ``^(...)``) is refused with its reason.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from .names import clean_path


class GlobError(ValueError):
    """A glob ohmyglob cannot compile; Pachyderm refuses it too."""


# -- lexer (ohmyglob syntax/lexer) -------------------------------------------------------------------

_BASIC_BREAKERS = "?*[{("
_EXTENDED_BREAKERS = _BASIC_BREAKERS + "@!^+"
_CAPTURE_BREAKERS = _EXTENDED_BREAKERS + ")|"
_TERMS_BREAKERS = _EXTENDED_BREAKERS + "},"
#: storage.globRegex: the characters that end a glob's literal prefix
_GLOB_CHARS = re.compile(r"[*?\[\]{}!()@+^]")


@dataclass
class _Lexer:
    data: str
    pos: int = 0
    tokens: list[tuple[str, str]] = field(default_factory=list)
    terms_level: int = 0
    capture_level: int = 0
    last: str = ""
    has_rune: bool = False
    error: str = ""

    def peek(self) -> str:
        return self.data[self.pos] if self.pos < len(self.data) else ""

    def read(self) -> str:
        if self.has_rune:
            self.has_rune = False
            self.pos += len(self.last)
            return self.last
        r = self.peek()
        self.pos += len(r)
        self.last = r
        return r

    def unread(self) -> None:
        if self.has_rune:
            self.error = "could not unread rune"
            return
        self.pos -= len(self.last)
        self.has_rune = True

    def next(self) -> tuple[str, str]:
        while True:
            if self.error:
                return ("error", self.error)
            if self.tokens:
                return self.tokens.pop(0)
            self._fetch_item()

    def _capture_or_text(self, r: str) -> None:
        if self.peek() == "(":
            self.read()
            self.tokens.append(("capture_open", r + "("))
            self.capture_level += 1
        else:
            self.unread()
            self._fetch_text(_BASIC_BREAKERS)

    def _fetch_item(self) -> None:
        r = self.read()
        if r == "":
            self.tokens.append(("eof", ""))
        elif self._fetch_group_mark(r):
            pass
        elif r == "[":
            self.tokens.append(("range_open", r))
            self._fetch_range()
        elif r in "@!^+":
            self._capture_or_text(r)
        elif r == "?":
            self._fetch_question()
        elif r == "*":
            self._fetch_star()
        else:
            self.unread()
            self._fetch_text(self._breakers())

    def _fetch_group_mark(self, r: str) -> bool:
        """``{`` ``,`` ``}`` of alternatives, ``(`` ``|`` ``)`` of captures; False when ``r`` is not one
        here (a ``,`` outside ``{...}`` is text)."""
        if r == "{":
            self.terms_level += 1
            self.tokens.append(("terms_open", r))
        elif r == "," and self.terms_level > 0:
            self.tokens.append(("separator", r))
        elif r == "}" and self.terms_level > 0:
            self.tokens.append(("terms_close", r))
            self.terms_level -= 1
        elif r == "|" and self.capture_level > 0:
            self.tokens.append(("separator", r))
        elif r == "(":
            self.tokens.append(("capture_open", "@("))
            self.capture_level += 1
        elif r == ")" and self.capture_level > 0:
            self.tokens.append(("capture_close", r))
            self.capture_level -= 1
        else:
            return False
        return True

    def _fetch_question(self) -> None:
        if self.read() == "(":
            self.tokens.append(("capture_open", "?("))
            self.capture_level += 1
        else:
            self.unread()
            self.tokens.append(("single", "?"))

    def _fetch_star(self) -> None:
        nxt = self.read()
        if nxt == "*":
            if self.peek() == "(":
                self.unread()
                self.tokens.append(("any", "*"))
            else:
                self.tokens.append(("super", "**"))
        elif nxt == "(":
            self.tokens.append(("capture_open", "*("))
            self.capture_level += 1
        else:
            self.unread()
            self.tokens.append(("any", "*"))

    def _breakers(self) -> str:
        """What ends a run of text: more characters are special inside ``{...}`` and captures."""
        if self.terms_level > 0:
            return _TERMS_BREAKERS
        if self.capture_level > 0:
            return _CAPTURE_BREAKERS
        return _EXTENDED_BREAKERS

    def _fetch_range(self) -> None:
        seen_not = in_posix = escaped = False
        data: list[str] = []
        while True:
            r = self.read()
            if r == "":
                self.error = "unexpected end of input"
                return
            if not escaped:
                if r == "\\":
                    escaped = True
                    continue
                if r == "[":
                    in_posix = True
                if r == "]":
                    if in_posix:
                        in_posix = False
                    else:
                        break
                if not seen_not and r in "!^":
                    self.tokens.append(("not", r))
                    seen_not = True
                    continue
            escaped = False
            data.append(r)
        if data:
            self.tokens.append(("text", "".join(data)))
        self.tokens.append(("range_close", "]"))

    def _fetch_text(self, breakers: str) -> None:
        data: list[str] = []
        escaped = False
        while True:
            r = self.read()
            if r == "":
                break
            if not escaped:
                if r == "\\":
                    escaped = True
                    continue
                if r in breakers:
                    self.unread()
                    break
            escaped = False
            data.append(r)
        if data:
            self.tokens.append(("text", "".join(data)))


# -- parser (ohmyglob syntax/ast) --------------------------------------------------------------------

_POSIX = {
    ":alnum:": "0-9A-Za-z",
    ":alpha:": "A-Za-z",
    ":ascii:": "\x00-\x7f",
    ":blank:": "\t ",
    ":cntrl:": "\x00-\x1f\x7f",
    ":digit:": "0-9",
    ":graph:": "!-~]",
    ":lower:": "a-z",
    ":print:": " -~",
    ":punct:": "!-/:-@[-`{-~",
    ":space:": "\t\n\v\f\r ",
    ":upper:": "A-Z",
    ":word:": "0-9A-Za-z_",
    ":xdigit:": "0-9A-Fa-f",
}


@dataclass
class _Node:
    kind: str  # pattern, any_of, capture, text, any, super, single, list
    value: object = None
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)

    def insert(self, child: _Node) -> _Node:
        child.parent = self
        self.children.append(child)
        return child


def _up(node: _Node, levels: int) -> _Node:
    for _ in range(levels):
        if node.parent is None:
            raise GlobError("unbalanced '}' or ')'")
        node = node.parent
    return node


def _parse(glob: str) -> _Node:
    lexer = _Lexer(glob)
    root = tree = _Node("pattern")
    while True:
        kind, raw = lexer.next()
        if kind == "eof":
            return root
        if kind == "error":
            raise GlobError(raw)
        if kind == "text":
            tree.insert(_Node("text", raw))
        elif kind in ("any", "super", "single"):
            tree.insert(_Node(kind))
        elif kind == "range_open":
            tree.insert(_parse_range(lexer))
        elif kind in ("terms_open", "capture_open"):
            group = tree.insert(_Node("any_of") if kind == "terms_open" else _Node("capture", raw[:1]))
            tree = group.insert(_Node("pattern"))
        elif kind == "separator":
            tree = _up(tree, 1).insert(_Node("pattern"))
        elif kind in ("terms_close", "capture_close"):
            tree = _up(tree, 2)
        else:
            raise GlobError(f"unexpected token: {raw}")


def _parse_range(lexer: _Lexer) -> _Node:
    """The tokens of a ``[...]`` class after its ``[``, as one ``list`` node (negated, characters)."""
    negate, chars = False, ""
    while True:
        kind, raw = lexer.next()
        if kind == "eof":
            raise GlobError("unexpected end")
        if kind == "error":
            raise GlobError(raw)
        if kind == "not":
            negate = True
        elif kind == "text":
            chars = raw
            for name, ranges in _POSIX.items():
                chars = chars.replace(name, ranges)
        elif kind == "range_close":
            return _Node("list", (negate, chars))


# -- compiler (ohmyglob compiler) --------------------------------------------------------------------

_CLOSE_NEG = "\uffff"
_BOUNDARY = "\ufffe"
_GO_META = set("\\.+*?()|[]{}^$")
_DOT = "[^/]"  # any character but the separator


def _quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta."""
    return "".join("\\" + c if c in _GO_META else c for c in text)


def _compile_node(node: _Node) -> str:
    if node.kind == "any_of":
        if not node.children:
            return ""
        return "(?:" + "|".join(_compile_node(c) for c in node.children) + ")"
    if node.kind == "pattern":
        return "".join(_compile_node(c) for c in node.children)
    if node.kind == "capture":
        return _compile_capture(node)
    if node.kind == "any":
        return _DOT + "*" + _BOUNDARY
    if node.kind == "super":
        return ".*" + _BOUNDARY
    if node.kind == "single":
        return _DOT
    if node.kind == "list":
        negate, chars = node.value  # type: ignore[misc]
        return "[" + ("^" if negate else "") + _quote_meta(chars) + "]"
    if node.kind == "text":
        return _quote_meta(str(node.value)) + _BOUNDARY
    raise GlobError("could not compile tree: unknown node type")


def _compile_capture(node: _Node) -> str:
    """An extglob capture: ``@(a|b)``, ``*(a)``, ``+(a)``, ``?(a)``, ``!(a)``."""
    if not node.children:
        return ""
    quantifier = node.value
    joiner = _CLOSE_NEG + "|" if quantifier == "!" else "|"
    body = joiner.join(_compile_node(c) for c in node.children)
    if quantifier in ("*", "?", "+"):
        return f"((?:{body}){quantifier})"
    if quantifier == "@":
        return f"({body})"
    if quantifier == "!":
        return f"((?:(?!(?:{body}{_CLOSE_NEG})){_DOT}*))"
    raise GlobError(f"unimplemented quatifier {quantifier}")


def glob_regex(glob: str) -> str:
    """The regular expression ohmyglob compiles ``glob`` to (``\\A...\\z`` written ``^...$`` for Python)."""
    regex = _compile_node(_parse(glob))
    index = regex.find(_CLOSE_NEG + ")")
    if index > 0:
        # a negation matches up to the next boundary, or to the end when nothing bounds it
        regex = regex.replace(_CLOSE_NEG, "" if _BOUNDARY in regex[index:] else "$")
    return r"\A" + regex.replace(_BOUNDARY, "") + r"\Z"


@lru_cache(maxsize=256)
def compile_glob(glob: str) -> re.Pattern[str]:
    """Compile a (cleaned) glob; GlobError when ohmyglob or the regex engine refuses it."""
    try:
        regex = glob_regex(glob)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # '--' or '&&' in a class: literal in both
            return re.compile(regex)
    except re.error as exc:
        raise GlobError(f"glob {glob!r} does not compile: {exc}") from exc


def clean_glob(glob: str) -> str:
    """``pfsfile.CleanPath``: what Pachyderm stores and matches (``a/`` is ``/a``; spaces are kept)."""
    return clean_path(glob)


def check_glob(glob: str) -> None:
    """Raise GlobError for a glob Pachyderm's create pipeline would refuse."""
    compile_glob(clean_glob(glob))


def literal_prefix(glob: str) -> str:
    """``storage.GlobLiteralPrefix``: only paths starting with this are candidates."""
    match = _GLOB_CHARS.search(glob)
    return glob if match is None else glob[: match.start()]


def glob_matches(glob: str, path: str) -> bool:
    """Whether ``path`` (absolute, e.g. ``/sub/a.csv``; ``/`` is the root) is a datum of ``glob``.

    Mirrors Pachyderm's ``globMatchFunction`` and its literal-prefix filter.
    """
    glob = clean_glob(glob)
    if path == "/" and glob == "/":
        return True
    if not path.startswith(literal_prefix(glob)) and not (path + "/").startswith(literal_prefix(glob)):
        return False
    return compile_glob(glob).match(path.rstrip("/")) is not None


def candidate_paths(files: Iterable[str]) -> list[str]:
    """Every path a glob is matched against: the root, each directory and each file (sorted).

    ``files`` are relative file paths (``sub/a.csv``); directories are implied by them.
    """
    paths = {"/"}
    for rel in files:
        parts = rel.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            paths.add("/" + "/".join(parts[:i]))
    return sorted(paths)


def expand_glob(glob: str, files: Iterable[str]) -> list[str]:
    """The matched paths (datum roots) of ``glob`` over a commit holding ``files``, sorted."""
    return [p for p in candidate_paths(files) if glob_matches(glob, p)]


def files_under(datum_path: str, files: Iterable[str]) -> list[str]:
    """The files (relative paths) a datum rooted at ``datum_path`` contains: itself or everything below."""
    if datum_path == "/":
        return sorted(files)
    rel = datum_path.strip("/")
    return sorted(f for f in files if f == rel or f.startswith(rel + "/"))
