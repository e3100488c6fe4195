"""Message catalogues (one JSON file per language) and the choice of language for a request.

Every string a page shows comes from a catalogue; a key missing from a language falls back to
English (tests/test_console.py checks that both catalogues have the same keys). Numbers and dates
are localised in the browser with Intl (static/console.js), from the language of the page.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources

LANGUAGES = {"en": "English", "zh": "简体中文"}
DEFAULT = "en"
BCP47 = {"en": "en", "zh": "zh-Hans"}  # the html lang attribute and the Intl locale
COOKIE = "cityos_lang"


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
        text = self._messages.get(key) or self._fallback.get(key) or key
        return text.format(**values) if values else text


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
