"""Message catalogues (one JSON file per language) and the choice of language for a request.

Every string a page shows comes from a catalogue; a key missing from a language falls back to
English (tests/test_console.py checks that both catalogues have the same keys). Numbers are
formatted here (`t.num`, and every number a message holds) as Intl formats them in the page's
language, so a page reads right before its script runs; static/console.js formats them again with
Intl, and the dates (`<time class="when">`, in the browser's time zone, which only it knows).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import TypeGuard

from markupsafe import Markup

LANGUAGES = {"en": "English", "zh": "简体中文"}
DEFAULT = "en"
BCP47 = {"en": "en", "zh": "zh-Hans"}  # the html lang attribute and the Intl locale
COOKIE = "cityos_lang"
# the digit group and decimal separators of each language, as Intl.NumberFormat writes them
SEPARATORS = {"en": (",", "."), "zh": (",", ".")}


@functools.cache
def catalogue(language: str) -> Mapping[str, str]:
    text = resources.files("cityos.console").joinpath("messages", f"{language}.json").read_text("utf-8")
    messages: dict[str, str] = json.loads(text)
    return messages


class Translator:
    """`t("key", name=value)`: the message in the page's language, with {name} placeholders filled."""

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else DEFAULT
        self.locale = BCP47[self.language]
        self._messages = catalogue(self.language)
        self._fallback = catalogue(DEFAULT)

    def __call__(self, key: str, **values: object) -> str:
        """The message, its numbers written in the language (`112,684`, not `112684`)."""
        text = self._messages.get(key) or self._fallback.get(key) or key
        if not values:
            return text
        return text.format(**{k: self.number(v) if _numeric(v) else v for k, v in values.items()})

    def number(self, value: float) -> str:
        """A number as Intl.NumberFormat(locale, {maximumFractionDigits: 2}) writes it."""
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        group, point = SEPARATORS[self.language]
        text = f"{value:,}" if isinstance(value, int) else f"{value:,.2f}".rstrip("0").rstrip(".")
        text = "0" if text == "-0" else text
        return text.replace(",", "\0").replace(".", point).replace("\0", group)

    def num(self, value: object, extra: str = "") -> Markup | str:
        """A number as the pages show it: `<data class="num" value="raw">localised</data>` (console.js
        formats it again in the browser); anything else as it is."""
        if not _numeric(value):
            return "" if value is None else str(value)
        classes = f"num {extra}".strip()
        return Markup('<data class="{}" value="{}">{}</data>').format(classes, value, self.number(value))


def _numeric(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def choose(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The language: ?lang= first, then the cookie the switch sets, then Accept-Language, then English."""
    for given in (query, cookie):
        if given in LANGUAGES:
            return given
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.split("-")[0] in LANGUAGES:
            return tag.split("-")[0]
    return DEFAULT
