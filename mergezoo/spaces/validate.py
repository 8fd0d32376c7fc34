"""Checks on what a visitor sends the Space, each failing with a `SpaceInputError` that names
the input and the limit (the page shows its message instead of a traceback).

Example:
    >>> check_text("  I loved it ")
    'I loved it'
    >>> check_int(12, "images", 1, 8)
    Traceback (most recent call last):
    ...
    mergezoo.errors.SpaceInputError: images must be an integer from 1 to 8, got 12
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mergezoo.errors import SpaceInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_IMAGE_SIDE = 2048
MAX_TEXT_CHARS = 500
MAX_IMAGES = 8
MAX_SEED = 2**31 - 1


def check_image(path: str | Path | None, name: str | None = None) -> Any:
    """An uploaded image file: a known image type, at most 2 MiB and 2048 px a side, that PIL
    can decode. Returns the decoded `PIL.Image`. `name`: the file's name as uploaded (the
    server may store it under another)."""
    from PIL import Image, UnidentifiedImageError

    if path is None or str(path) == "":
        raise SpaceInputError("no image: upload one, or pick an example")
    file = Path(path)
    shown = name or file.name
    if Path(shown).suffix.lower() not in IMAGE_SUFFIXES:
        raise SpaceInputError(f"{shown}: not an image file (allowed: "
                              f"{', '.join(IMAGE_SUFFIXES)})")
    if not file.is_file():
        raise SpaceInputError(f"{shown}: the upload did not arrive")
    size = file.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise SpaceInputError(f"{shown}: {size / 2**20:.1f} MiB is over the "
                              f"{MAX_IMAGE_BYTES / 2**20:.0f} MiB limit")
    try:
        with Image.open(file) as img:
            if max(img.size) > MAX_IMAGE_SIDE:
                raise SpaceInputError(f"{shown}: {img.size[0]}x{img.size[1]} pixels is over "
                                      f"the {MAX_IMAGE_SIDE} px limit")
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise SpaceInputError(f"{shown}: cannot be read as an image ({err})") from None


def check_text(text: Any) -> str:
    """A sentence to classify: non-empty, at most 500 characters once stripped."""
    if not isinstance(text, str) or not text.strip():
        raise SpaceInputError("no text: type a sentence, or pick an example")
    text = text.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise SpaceInputError(f"the text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    return text


def check_int(value: Any, name: str, low: int, high: int) -> int:
    """An integer input (a number box may send a float such as 3.0) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and (not math.isfinite(value) or value != int(value))) or \
            not low <= value <= high:
        raise SpaceInputError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def check_choice(value: Any, name: str, choices: list[str]) -> str:
    if value not in choices:
        raise SpaceInputError(f"{name} {value!r} is not one of {choices}")
    return value
