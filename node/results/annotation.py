"""What is burned into a capture: the notices, the findings by probability, outlines, legend."""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from node.results.findings import AlgorithmInfo, ImageResult
from node.results.notices import notices
from node.results.region import HeatRegion

# At least this many findings are listed, and every present one.
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


def caption(
    image: ImageResult, algorithm: AlgorithmInfo, shown: str | None, overview: bool
) -> tuple[list[Line], list[Line]]:
    """Say what a capture shows: a header block and a footer block.

    Parameters
    ----------
    image : ImageResult
        The image and its findings.
    algorithm : AlgorithmInfo
        The model; its disclaimer goes into the footer when it is not trained.
    shown : str or None
        The finding whose Grad-CAM heatmap is blended in, if any.
    overview : bool
        Whether this is the overview capture (every region outlined) or one finding's.

    Returns
    -------
    tuple of (list of Line, list of Line)
        Header lines (notice, model, what is shown, findings by probability) and footer lines.
    """
    review, *disclaimer = notices(algorithm)
    header = [Line(review, _YELLOW), Line(f"Model: {algorithm.name} {algorithm.version}")]
    if shown is not None:
        explained = image.finding(shown)
        header.append(Line(f"Heatmap: {explained.name} {explained.probability:.2f}", _CYAN))
    else:
        header.append(Line("Heatmap: none", _CYAN))
    if overview:
        header.append(Line("Overview: outlined regions numbered as listed"))
    header.append(Line("Findings by probability:"))
    ranked = image.ranked
    shown_lines = max(TOP_FINDINGS, len(image.present))
    number = 0
    for finding in ranked[:shown_lines]:
        if finding.present:
            number += 1
            header.append(
                Line(f"  {number}. {finding.name} {finding.probability:.2f}  present", _ORANGE)
            )
        else:
            header.append(Line(f"  {finding.name} {finding.probability:.2f}"))
    if len(ranked) > shown_lines:
        header.append(Line(f"  (+{len(ranked) - shown_lines} more below threshold)"))
    footer = [Line(text, _ORANGE) for text in disclaimer]
    return header, footer


def draw_regions(
    rgb: np.ndarray, regions: Sequence[tuple[int, HeatRegion]], scale: float = 1.0
) -> np.ndarray:
    """Outline each region and put its number (its rank among present findings) beside it.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 (rows, cols, 3).
    regions : sequence of (int, HeatRegion)
        Each region with the number it has in the findings list.
    scale : float
        Capture pixels per source pixel (below 1 when the capture was shrunk).

    Returns
    -------
    numpy.ndarray
        A new uint8 array with the outlines drawn.
    """
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    rows, cols = rgb.shape[:2]
    width = max(2, round(min(rows, cols) / 300))
    font = _font(max(_MIN_FONT_PX, round(1.5 * _FONT_FRACTION * min(rows, cols))))
    for number, region in regions:
        points = [(float(x) * scale, float(y) * scale) for x, y in region.points]
        draw.line(points, fill=_ORANGE[:3], width=width, joint="curve")
        # The number sits just above the outline's topmost vertex, so it touches its region.
        x, top = min(points, key=lambda point: point[1])
        anchor = (x, max(0.0, top - font.size - width))
        draw.text(
            anchor, str(number), font=font, fill=_ORANGE[:3], stroke_width=2, stroke_fill=(0, 0, 0)
        )
    return np.asarray(canvas)


def draw_legend(rgb: np.ndarray, ramp: np.ndarray) -> np.ndarray:
    """A vertical colour scale at the right edge: the heat colours from low to high.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 (rows, cols, 3).
    ramp : numpy.ndarray
        uint8 (n, 3) colours of increasing heat, as blended into the image.

    Returns
    -------
    numpy.ndarray
        A new uint8 array with the legend drawn.
    """
    rows, cols = rgb.shape[:2]
    font = _font(max(_MIN_FONT_PX, round(_FONT_FRACTION * min(rows, cols))))
    margin = max(4, font.size // 2)
    bar_width = max(8, cols // 40)
    bar_height = max(3 * font.size, rows // 3)
    label_width = round(max(font.getlength(t) for t in ("Grad-CAM", "high", "low")))
    right = cols - margin
    left = right - max(bar_width, label_width) - 2 * margin
    top = rows // 2 - bar_height // 2
    layer = _layer(rgb)
    draw = ImageDraw.Draw(layer)
    step = round(font.size * 1.25)
    draw.rectangle(
        (left, top - 2 * step - margin, right, top + bar_height + step + 2 * margin),
        fill=_PANEL,
    )
    draw.text((left + margin, top - 2 * step), "Grad-CAM", font=font, fill=_WHITE)
    draw.text((left + margin, top - step), "high", font=font, fill=_WHITE)
    bar_left = left + margin
    for y in range(bar_height):
        # Top of the bar is the hottest colour.
        colour = ramp[round((len(ramp) - 1) * (1 - y / max(1, bar_height - 1)))]
        draw.line((bar_left, top + y, bar_left + bar_width, top + y), fill=(*map(int, colour), 255))
    draw.text((left + margin, top + bar_height + margin // 2), "low", font=font, fill=_WHITE)
    return _composited(rgb.copy(), layer)


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
    layer = _layer(rgb)
    draw = ImageDraw.Draw(layer)
    step = round(font.size * 1.25)
    if header_lines:
        _draw_block(draw, header_lines, font, (margin, margin), step, margin)
    top = rows - margin - step * len(footer_lines) - margin
    if footer_lines:
        _draw_block(draw, footer_lines, font, (margin, top), step, margin)
    # Cut where the footer starts, so the header's and the footer's boxes are composited apart
    # rather than as one box spanning the image.
    return _composited(rgb.copy(), layer, cuts=(top,))


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


def _layer(rgb: np.ndarray) -> Image.Image:
    """A transparent RGBA layer the size of the image, to draw semi-opaque panels on."""
    rows, cols = rgb.shape[:2]
    return Image.new("RGBA", (cols, rows), (0, 0, 0, 0))


def _composited(rgb: np.ndarray, layer: Image.Image, cuts: Sequence[int] = ()) -> np.ndarray:
    """Composite the layer over `rgb` in place and return it.

    Only the drawn bounding box of each band between the row `cuts` is converted and
    blended: where the layer is fully transparent the image is unchanged anyway, and
    converting the whole 1024² image to RGBA and back cost more than the text on it.
    """
    rows, cols = rgb.shape[:2]
    edges = sorted({0, rows, *(min(max(cut, 0), rows) for cut in cuts)})
    for band_top, band_bottom in itertools.pairwise(edges):
        box = layer.crop((0, band_top, cols, band_bottom)).getbbox()
        if box is None:
            continue
        left, top, right, bottom = box[0], box[1] + band_top, box[2], box[3] + band_top
        patch = Image.fromarray(rgb[top:bottom, left:right]).convert("RGBA")
        drawn = layer.crop((left, top, right, bottom))
        rgb[top:bottom, left:right] = np.asarray(Image.alpha_composite(patch, drawn).convert("RGB"))
    return rgb


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
