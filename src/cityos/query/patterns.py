"""User regular expressions (q `~=`/`!~=`, idPattern of queries, subscriptions, registrations and
temporal queries), evaluated with RE2: matching takes time linear in the text whatever the pattern,
so no pattern can stall a request (Python's `re` and `regex` backtrack: `(a+)+$` against 28
characters ran for 18 s). What RE2 cannot evaluate safely (backreferences, lookarounds, recursion,
possessive quantifiers) is refused with a 400 that names the problem.

PostgreSQL pushes idPattern into SQL only when the pattern is written in the subset where its regex
dialect and RE2 agree (`portable`); any other pattern is matched in Python with RE2, so both
back-ends answer the same.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import re2
from re2 import _re2

from cityos.errors import BadRequestData

DEFAULT_MAX_LENGTH = 1024  # the max_pattern_length setting's default
_MAX_MEMORY = 8 << 20  # bytes RE2 may use for one compiled pattern and its automata
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.max_mem = _MAX_MEMORY
_OPTIONS.never_capture = True  # only "is there a match": RE2 can answer with its DFA alone
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED

# Patterns PostgreSQL's ARE dialect reads exactly as RE2 does: literals, `.`, anchors, groups,
# alternation, bracket expressions (no POSIX classes), `*`, `+`, `?`, and backslash only before
# punctuation. Escapes (\d, \w, \b, \z), `(?` constructs and counted repetition (RE2 allows up to
# 1000, PostgreSQL 255) differ between the two.
_PORTABLE = re.compile(r"(?:[^\\\[({]|\\[^A-Za-z0-9]|\((?!\?)|\[(?![\[:.=]))*")


class Pattern:
    """A compiled pattern. The RE2 object is used directly: the `re2` module's `search` builds a
    match object with offsets in characters, which costs ten times the search itself."""

    __slots__ = ("_regexp",)

    def __init__(self, regexp: Any) -> None:
        self._regexp = regexp

    def search(self, text: str) -> bool:
        """Whether the pattern occurs in `text` (lone surrogates never match a character)."""
        encoded = text.encode("utf-8", "surrogatepass")
        return bool(self._regexp.Match(_UNANCHORED, encoded, 0, len(encoded))[0][0] >= 0)


def _explain(pattern: str, message: str) -> str:
    """Name the usual culprits in words; RE2's own message otherwise."""
    if re.search(r"\\[1-9]|\\g<|\(\?P=", pattern):
        return "backreferences are not supported"
    if re.search(r"\(\?<?[=!]", pattern):
        return "lookahead and lookbehind are not supported"
    if re.search(r"\(\?(R|\d|&|P>)", pattern):
        return "recursion is not supported"
    if re.search(r"[*+?}][+]", pattern):
        return "possessive quantifiers are not supported"
    if re.search(r"\(\?>", pattern):
        return "atomic groups are not supported"
    return message


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> Pattern | str:
    """The compiled pattern, or why RE2 refuses it."""
    regexp = _re2.RE2(pattern.encode("utf-8", "surrogatepass"), _OPTIONS)
    if not regexp.ok():
        return _explain(pattern, regexp.error().decode(errors="replace"))
    return Pattern(regexp)


def compile_pattern(pattern: str, what: str, max_length: int | None = DEFAULT_MAX_LENGTH) -> Pattern:
    """The compiled pattern (cached), or BadRequestData that begins with `what` and names the problem.
    `max_length`: the max_pattern_length setting; None for a pattern whose length was checked when
    it came in (a stored subscription's, compiled again at start-up, whatever the setting is now)."""
    if max_length is not None and len(pattern) > max_length:
        raise BadRequestData(f"{what}: longer than {max_length} characters (max_pattern_length)")
    compiled = _compile(pattern)
    if isinstance(compiled, str):
        raise BadRequestData(f"{what}: {compiled}")
    return compiled


def found(pattern: str, text: str) -> bool:
    """Whether `pattern` occurs in `text`, for patterns checked when they came in (a query's) or
    stored earlier (a registration's): one RE2 cannot evaluate matches nothing, never an error."""
    compiled = _compile(pattern)
    return not isinstance(compiled, str) and compiled.search(text)


def portable(pattern: str) -> bool:
    """Whether PostgreSQL's `~` reads `pattern` as RE2 does (then it may be pushed into SQL)."""
    return _PORTABLE.fullmatch(pattern) is not None


class _Selection(Protocol):
    id_pattern: str | None
    predicate: Callable[[dict[str, Any]], bool] | None


Q = TypeVar("Q", bound=_Selection)


def id_pattern_in_python(query: Q) -> Q:
    """`query` with an idPattern PostgreSQL would read differently moved from SQL into its predicate."""
    pattern = query.id_pattern
    if pattern is None or portable(pattern):
        return query
    compile_pattern(pattern, "idPattern: invalid regular expression", len(pattern))  # 400 now, not in the store
    previous = query.predicate

    def predicate(entity: dict[str, Any]) -> bool:
        return found(pattern, entity["id"]) and (previous is None or previous(entity))

    return dataclasses.replace(query, id_pattern=None, predicate=predicate)  # type: ignore[type-var]
