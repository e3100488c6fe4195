"""Content negotiation per NGSI-LD 6.3.4 and RFC 9110 5.3.2."""

from __future__ import annotations

from cityos.errors import NotAcceptable, UnsupportedMediaType

JSON = "application/json"
JSON_LD = "application/ld+json"
GEO_JSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"


def _ranges(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        if not media:
            continue
        quality = 1.0
        for parameter in pieces[1:]:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 1.0
        ranges.append((media, quality))
    return ranges


_CHOSEN: dict[tuple[str, tuple[str, ...]], str] = {}  # (Accept, offered) -> choice: clients repeat their Accept


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """The offered media type the client prefers; ties go to the order of `offered`."""
    if not accept or not accept.strip():
        return offered[0]
    found = _CHOSEN.get((accept, offered))
    if found is not None:
        return found
    chosen = _negotiate(accept, offered)  # a NotAcceptable is not kept: it is raised each time
    if len(_CHOSEN) >= 1024:
        _CHOSEN.clear()
    _CHOSEN[(accept, offered)] = chosen
    return chosen


def _negotiate(accept: str, offered: tuple[str, ...]) -> str:
    ranges = _ranges(accept)
    best: tuple[float, int] | None = None
    chosen = None
    for index, media in enumerate(offered):
        main = media.split("/")[0]
        quality = None
        specificity = -1
        for pattern, q in ranges:
            if pattern == media and specificity < 2:
                quality, specificity = q, 2
            elif pattern == f"{main}/*" and specificity < 1:
                quality, specificity = q, 1
            elif pattern == "*/*" and specificity < 0:
                quality, specificity = q, 0
        if quality is None or quality <= 0:
            continue
        key = (quality, -index)
        if best is None or key > best:
            best, chosen = key, media
    if chosen is None:
        raise NotAcceptable(f"none of {', '.join(offered)} is acceptable for Accept: {accept}")
    return chosen


def request_media_type(content_type: str | None, *, allow_merge_patch: bool = False) -> str:
    """The request body's media type, or 415 if NGSI-LD does not accept it."""
    media = (content_type or "").split(";")[0].strip().lower()
    allowed = {JSON, JSON_LD} | ({MERGE_PATCH} if allow_merge_patch else set())
    if media not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'} is not supported; use {' or '.join(sorted(allowed))}"
        )
    return media
