"""Text burned into the overlay: what the heatmap shows, the top findings, and the notices."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from node.results.findings import AlgorithmInfo, ImageResult
from node.results.notices import notices

TOP_FINDINGS = 5

_WHITE = (255, 255, 255, 255)
_YELLOW = (255, 214, 0, 255)
_ORANGE = (255, 140, 40, 255)
_CYAN = (120, 220, 255, 255)
_PANEL = (0, 0, 0, 170)  # semi-opaque, so the anatomy under the text stays faintly visible

# Text height relative to the shorter image side, with a floor that stays legible on 440².
_FONT_FRACTION = 0.018
_MIN_FONT_PX = 12

# Pillow's built-in scalable font covers ASCII only; these have an ASCII stand-in.
_ASCII_STAND_INS = str.maketrans(
    {"—": "-", "–": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "≥": ">=", "≤": "<="}
)


@dataclass(frozen=True)
class Line:
    """One line of burned-in text and its colour."""

    text: str
    colour: tuple[int, int, int, int] = _WHITE


def caption(image: ImageResult, algorithm: AlgorithmInfo) -> tuple[list[Line], list[Line]]:
    """Say what the overlay shows: a header block and a footer block.

    Parameters
    ----------
    image : ImageResult
        The image, its findings and the finding its heatmap explains.
    algorithm : AlgorithmInfo
        The model; its disclaimer goes into the footer when it is not trained.

    Returns
    -------
    tuple of (list of Line, list of Line)
        Header lines (notice, model, heatmap finding, top findings) and footer lines.
    """
    review, *disclaimer = notices(algorithm)
    header = [Line(review, _YELLOW), Line(f"Model: {algorithm.name} {algorithm.version}")]
    if image.heatmap is not None and image.heatmap_finding is not None:
        explained = image.finding(image.heatmap_finding)
        header.append(Line(f"Heatmap: {explained.name} {explained.probability:.2f}", _CYAN))
    else:
        header.append(Line("Heatmap: none", _CYAN))
    header.append(Line("Top findings (probability):"))
    ranked = sorted(image.findings, key=lambda finding: finding.probability, reverse=True)
    for finding in ranked[:TOP_FINDINGS]:
        call = "  present" if finding.present else ""
        colour = _ORANGE if finding.present else _WHITE
        header.append(Line(f"  {finding.name} {finding.probability:.2f}{call}", colour))
    footer = [Line(text, _ORANGE) for text in disclaimer]
    return header, footer


def burn_in(rgb: np.ndarray, header: Sequence[Line], footer: Sequence[Line]) -> np.ndarray:
    """Draw the header at the top left and the footer along the bottom, each on a dark panel.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 (rows, cols, 3).
    header, footer : sequence of Line
        Text to draw; lines wider than the image are wrapped at word boundaries.

    Returns
    -------
    numpy.ndarray
        A new uint8 (rows, cols, 3) array with the text burned in.
    """
    rows, cols = rgb.shape[:2]
    font = _font(max(_MIN_FONT_PX, round(_FONT_FRACTION * min(rows, cols))))
    margin = max(4, font.size // 2)
    width = cols - 4 * margin
    header_lines = _wrap(header, font, width)
    footer_lines = _wrap(footer, font, width)
    canvas = Image.fromarray(rgb).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    step = round(font.size * 1.25)
    if header_lines:
        _draw_block(draw, header_lines, font, (margin, margin), step, margin)
    if footer_lines:
        top = rows - margin - step * len(footer_lines) - margin
        _draw_block(draw, footer_lines, font, (margin, top), step, margin)
    return np.asarray(Image.alpha_composite(canvas, layer).convert("RGB"))


def _draw_block(
    draw: ImageDraw.ImageDraw,
    lines: list[Line],
    font: ImageFont.FreeTypeFont,
    origin: tuple[int, int],
    step: int,
    pad: int,
) -> None:
    left, top = origin
    widest = max(draw.textlength(line.text, font=font) for line in lines)
    panel = (left, top, left + widest + 2 * pad, top + step * len(lines) + pad)
    draw.rectangle(panel, fill=_PANEL)
    # A thin black outline keeps the letters readable where the panel sits on bright bone.
    stroke = max(1, font.size // 14)
    for n, line in enumerate(lines):
        position = (left + pad, top + pad // 2 + n * step)
        draw.text(
            position,
            line.text,
            font=font,
            fill=line.colour,
            stroke_width=stroke,
            stroke_fill=(0, 0, 0, 255),
        )


def _wrap(lines: Sequence[Line], font: ImageFont.FreeTypeFont, width: int) -> list[Line]:
    wrapped = []
    for line in lines:
        text = _printable(line.text)
        indent = text[: len(text) - len(text.lstrip())]
        current = ""
        for word in text.split():
            candidate = f"{current} {word}" if current else f"{indent}{word}"
            if current and font.getlength(candidate) > width:
                wrapped.append(Line(current, line.colour))
                candidate = f"{indent}{word}"
            current = candidate
        wrapped.append(Line(current, line.colour))
    return wrapped


def _printable(text: str) -> str:
    """Text the ASCII-only built-in font can draw: dashes and quotes mapped, accents dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_STAND_INS))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow >= 10.1 ships a scalable default font, so no font file has to be installed.
    return ImageFont.load_default(size=size)
