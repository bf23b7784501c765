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

# Viewers draw their own overlays on the image: a few lines of text in every corner (patient,
# study, window, zoom; OHIF's corner text takes about a third of the width) and orientation
# letters at each edge's midpoint (OHIF's ViewportOrientationMarkers, a letter or two beside
# the edge). Burned-in text and the legend keep out of these zones, so neither hides the
# other. Fractions of the image: a corner zone's (width, height), a midpoint zone's (length
# along the edge, depth into the image).
CORNER_ZONE = (0.30, 0.12)
MIDPOINT_ZONE = (0.12, 0.06)

Box = tuple[int, int, int, int]  # (left, top, right, bottom), pixels, right/bottom exclusive

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
    image: ImageResult,
    algorithm: AlgorithmInfo,
    shown: str | None,
    overview: bool,
    method: str = "Grad-CAM",
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
    method : str
        The explanation's name, where it is not Grad-CAM's.

    Returns
    -------
    tuple of (list of Line, list of Line)
        Header lines (notice, model, what is shown, findings by probability) and footer lines.
    """
    review, *disclaimer = notices(algorithm)
    header = [Line(review, _YELLOW), Line(f"Model: {algorithm.name} {algorithm.version}")]
    if shown is not None:
        explained = image.finding(shown)
        named = "" if method == "Grad-CAM" else f" ({method})"
        header.append(Line(f"Heatmap{named}: {explained.name} {explained.probability:.2f}", _CYAN))
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


def viewer_zones(rows: int, cols: int) -> list[Box]:
    """Where viewers draw their own overlays on a (rows, cols) image: corners and midpoints.

    Viewers place their text relative to the viewport, so these are the zones it covers when
    the image fills the viewport (the tightest case): the four corners and the four edges'
    midpoints, sized by `CORNER_ZONE` and `MIDPOINT_ZONE`.

    Returns
    -------
    list of (left, top, right, bottom)
        Eight boxes in pixels, right and bottom exclusive: the corners, then the midpoints
        (top, bottom, left, right).
    """
    corner_w, corner_h = round(CORNER_ZONE[0] * cols), round(CORNER_ZONE[1] * rows)
    along_x, along_y = round(MIDPOINT_ZONE[0] * cols), round(MIDPOINT_ZONE[0] * rows)
    depth_x, depth_y = round(MIDPOINT_ZONE[1] * cols), round(MIDPOINT_ZONE[1] * rows)
    mid_x, mid_y = cols // 2, rows // 2
    return [
        (0, 0, corner_w, corner_h),
        (cols - corner_w, 0, cols, corner_h),
        (0, rows - corner_h, corner_w, rows),
        (cols - corner_w, rows - corner_h, cols, rows),
        (mid_x - along_x // 2, 0, mid_x + along_x // 2, depth_y),
        (mid_x - along_x // 2, rows - depth_y, mid_x + along_x // 2, rows),
        (0, mid_y - along_y // 2, depth_x, mid_y + along_y // 2),
        (cols - depth_x, mid_y - along_y // 2, cols, mid_y + along_y // 2),
    ]


def draw_legend(rgb: np.ndarray, ramp: np.ndarray, title: str = "Grad-CAM") -> np.ndarray:
    """A vertical colour scale at the right edge, between the top-right corner and the right
    edge's midpoint (clear of the viewer's corner text and orientation letter).

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 (rows, cols, 3).
    ramp : numpy.ndarray
        uint8 (n, 3) colours of increasing heat, as blended into the image.
    title : str
        The method whose heat it is, 8 characters at most ("Grad-CAM", "IG").

    Returns
    -------
    numpy.ndarray
        A new uint8 array with the legend drawn.
    """
    rows, cols = rgb.shape[:2]
    font = _font(max(_MIN_FONT_PX, round(_FONT_FRACTION * min(rows, cols))))
    margin = max(4, font.size // 2)
    step = round(font.size * 1.25)
    left, top, right, bottom = _legend_box(rows, cols, font)
    bar_width = max(8, cols // 40)
    bar_top = top + margin + 2 * step
    bar_height = max(8, bottom - margin - step - bar_top)
    layer = _layer(rgb)
    draw = ImageDraw.Draw(layer)
    draw.rectangle((left, top, right - 1, bottom - 1), fill=_PANEL)
    draw.text((left + margin, top + margin), title, font=font, fill=_WHITE)
    draw.text((left + margin, top + margin + step), "high", font=font, fill=_WHITE)
    bar_left = left + margin
    for y in range(bar_height):
        # Top of the bar is the hottest colour.
        colour = ramp[round((len(ramp) - 1) * (1 - y / max(1, bar_height - 1)))]
        draw.line(
            (bar_left, bar_top + y, bar_left + bar_width, bar_top + y),
            fill=(*map(int, colour), 255),
        )
    draw.text((left + margin, bar_top + bar_height), "low", font=font, fill=_WHITE)
    return _composited(rgb.copy(), layer)


def burn_in(
    rgb: np.ndarray, header: Sequence[Line], footer: Sequence[Line], *, legend: bool = False
) -> np.ndarray:
    """Draw the header down the left edge and the footer above the bottom edge's midpoint,
    each on a dark panel, clear of the zones where viewers draw their own overlays.

    The header starts below the top-left corner zone, against the left edge when it ends
    above the left edge's midpoint, and otherwise moved in past the orientation letter. The
    footer sits between the bottom corner zones, above the bottom edge's midpoint.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 (rows, cols, 3).
    header, footer : sequence of Line
        Text to draw; lines wider than their place are wrapped at word boundaries.
    legend : bool
        Whether `draw_legend` drew the colour scale: the header then wraps before it.

    Returns
    -------
    numpy.ndarray
        A new uint8 (rows, cols, 3) array with the text burned in.
    """
    rows, cols = rgb.shape[:2]
    font = _font(max(_MIN_FONT_PX, round(_FONT_FRACTION * min(rows, cols))))
    margin = max(4, font.size // 2)
    step = round(font.size * 1.25)
    zones = viewer_zones(rows, cols)
    corner_bottom = zones[0][3]
    left_mid, right_mid, bottom_mid = zones[6], zones[7], zones[5]
    right_limit = (_legend_box(rows, cols, font)[0] if legend else right_mid[0]) - margin
    layer = _layer(rgb)
    draw = ImageDraw.Draw(layer)
    top = corner_bottom + margin
    left = margin
    header_lines = _wrap(header, font, right_limit - left - 2 * margin)
    if top + step * len(header_lines) + margin > left_mid[1] - margin:
        left = left_mid[2] + margin
        header_lines = _wrap(header, font, right_limit - left - 2 * margin)
    if header_lines:
        _draw_block(draw, header_lines, font, (left, top), step, margin)
    corner_right = zones[2][2]
    footer_lines = _wrap(footer, font, cols - 2 * corner_right - 4 * margin)
    footer_top = bottom_mid[1] - margin - step * len(footer_lines) - margin
    if footer_lines:
        widest = max(draw.textlength(line.text, font=font) for line in footer_lines)
        footer_left = round((cols - widest) / 2) - margin
        _draw_block(draw, footer_lines, font, (footer_left, footer_top), step, margin)
    # Cut where the footer starts, so the header's and the footer's boxes are composited apart
    # rather than as one box spanning the image.
    return _composited(rgb.copy(), layer, cuts=(footer_top,))


def _legend_box(rows: int, cols: int, font: ImageFont.FreeTypeFont) -> Box:
    """The legend's panel: at the right edge, below the top-right corner zone and above the
    right edge's midpoint zone."""
    zones = viewer_zones(rows, cols)
    margin = max(4, font.size // 2)
    bar_width = max(8, cols // 40)
    # The panel is as wide for every title (none is longer than "Grad-CAM").
    label_width = round(max(font.getlength(t) for t in ("Grad-CAM", "high", "low")))
    right = cols - margin
    left = right - max(bar_width, label_width) - 2 * margin
    return left, zones[1][3] + margin, right, zones[7][1] - margin


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
