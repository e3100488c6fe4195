"""Photos sent with a report: checked by decoding them (JPEG, PNG and WebP only, whatever the
file name or Content-Type claims), re-encoded so nothing of the original file survives (EXIF,
its GPS position, XMP, comments, trailing data), and kept in a directory under a name derived
from the cleaned bytes (a SHA-256), served at {base}/open311/v2/media/{name}.

Why a directory rather than a table: photos are large and written once; kept out of the database
they leave its backups, replication and the write path's transactions small, and the files can sit
on shared or object-backed storage (one path for every worker of a deployment, --open311-media-dir).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

FORMATS = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"), "WEBP": ("webp", "image/webp")}
MEDIA_TYPES = {ext: media_type for ext, media_type in FORMATS.values()}
NAME = re.compile(r"^[0-9a-f]{64}\.(jpg|png|webp)$")
MAX_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded


class BadImage(ValueError):
    """Not an image this server accepts (said to the citizen as a 400)."""


@dataclass(frozen=True, slots=True)
class CleanImage:
    data: bytes
    extension: str
    media_type: str

    @property
    def name(self) -> str:
        return f"{hashlib.sha256(self.data).hexdigest()}.{self.extension}"


def clean_image(raw: bytes) -> CleanImage:
    """The image decoded and written again without any metadata, or BadImage."""
    from PIL import Image, UnidentifiedImageError  # Pillow is loaded with the first photo

    try:
        with Image.open(io.BytesIO(raw)) as image:
            kind = image.format or ""
            if kind not in FORMATS:
                raise BadImage("the photo must be a JPEG, PNG or WebP image")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"the photo has more than {MAX_PIXELS} pixels")
            image.load()  # decode all of it: a truncated or corrupt file fails here
            pixels = image.copy()  # pixels only: info (EXIF, XMP, ICC, comments) is not carried over
    except BadImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise BadImage("the photo is not a readable JPEG, PNG or WebP image") from None
    pixels.info = {}
    out = io.BytesIO()
    if kind == "JPEG":
        if pixels.mode not in ("RGB", "L"):
            pixels = pixels.convert("RGB")
        pixels.save(out, format="JPEG", quality=85, exif=b"")
    elif kind == "PNG":
        pixels.save(out, format="PNG", optimize=True)
    else:
        pixels.save(out, format="WEBP", quality=85, exif=b"")
    extension, media_type = FORMATS[kind]
    return CleanImage(out.getvalue(), extension, media_type)


class MediaStore:
    """Content-addressed files in one directory (made on first use, mode 0700)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def save(self, image: CleanImage) -> tuple[str, bool]:
        """The file's name, and whether this call made it (False: the same photo was sent before);
        written to a temporary file and renamed, so a reader never sees half of it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = image.name
        target = self.directory / name
        if target.exists():
            return name, False
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(image.data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return name, True

    def remove(self, name: str) -> None:
        if NAME.match(name):
            (self.directory / name).unlink(missing_ok=True)

    def path(self, name: str) -> Path | None:
        """The file of a name this store made, or None (any other name: never a path outside)."""
        if not NAME.match(name):
            return None
        path = self.directory / name
        return path if path.is_file() else None


def default_directory(database: str) -> str:
    """Next to a SQLite file; ./cityos-open311-media with PostgreSQL (share one path across workers)."""
    if database.startswith(("postgresql://", "postgres://")):
        return "cityos-open311-media"
    return f"{database}.open311-media"
