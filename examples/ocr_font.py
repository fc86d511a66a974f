"""The 5x7 bitmap font of the OCR example, and a renderer that draws digit strings with it.

`examples/build_models.py` builds the `ocr` servable's recognizer from these glyphs, and `examples/ocr_client.py`
renders its test images with `render`, which also returns where each character was drawn: the ground truth the
client checks the servable's answer against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHARSET = "0123456789"
GLYPH_ROWS = 7
GLYPH_COLS = 5

# One string per row, "#" = ink. Every glyph is 7 rows tall and its inked columns are contiguous, so a glyph drawn
# at any integer scale is one column run whose height is 7 * scale (what the servable's stages rely on).
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}


def glyph(char: str) -> np.ndarray:
    """The bitmap of one character: bool [7, 5], True = ink.

    Raises:
        KeyError: The font has no such character.
    """
    return np.array([[cell == "#" for cell in row] for row in _GLYPHS[char]], dtype=bool)


def templates() -> np.ndarray:
    """All glyphs of `CHARSET` in order: float32 [10, 7, 5], 1.0 = ink."""
    return np.stack([glyph(char) for char in CHARSET]).astype(np.float32)


@dataclass(frozen=True)
class Rendered:
    """A rendered text line: the grayscale image and the ground truth."""

    image: np.ndarray  # uint8 [height, width], dark ink on light paper
    text: str
    boxes: list[tuple[int, int, int, int]]  # per character: x0, y0, x1, y1 of its ink (x1, y1 exclusive)


def render(
    text: str,
    *,
    scale: int = 3,
    spacing: int | None = None,
    origin: tuple[int, int] = (4, 4),
    size: tuple[int, int] | None = None,
    ink: int = 20,
    paper: int = 235,
    noise: int = 0,
    seed: int = 0,
) -> Rendered:
    """Draws `text` in the 5x7 font on a plain background.

    Args:
        text: Characters of `CHARSET`.
        scale: Pixels per font pixel (>= 1).
        spacing: Blank pixels between two character cells; default `scale + 1`.
        origin: (x, y) of the first cell's top-left corner.
        size: (width, height) of the image; default: the text plus `origin` as margin on each side.
        ink: Gray level of the ink.
        paper: Gray level of the background.
        noise: Amplitude of uniform noise added to every pixel (clipped to 0..255).
        seed: Seed of the noise.

    Returns:
        The image, `text`, and the ink box of each character.
    """
    spacing = scale + 1 if spacing is None else spacing
    x0, y0 = origin
    cell_width = GLYPH_COLS * scale
    text_width = len(text) * cell_width + max(len(text) - 1, 0) * spacing
    width, height = size or (text_width + 2 * x0, GLYPH_ROWS * scale + 2 * y0)
    picture = np.full((height, width), float(paper))
    boxes: list[tuple[int, int, int, int]] = []
    for position, char in enumerate(text):
        left = x0 + position * (cell_width + spacing)
        bitmap = np.kron(glyph(char), np.ones((scale, scale), dtype=bool))
        region = picture[y0 : y0 + bitmap.shape[0], left : left + bitmap.shape[1]]
        if region.shape != bitmap.shape:
            raise ValueError(f"'{text}' at scale {scale} does not fit in a {width}x{height} image")
        region[bitmap] = ink
        columns = np.flatnonzero(bitmap.any(axis=0))
        boxes.append((left + int(columns[0]), y0, left + int(columns[-1]) + 1, y0 + bitmap.shape[0]))
    if noise:
        picture += np.random.default_rng(seed).uniform(-noise, noise, size=picture.shape)
    image = np.clip(np.round(picture), 0, 255).astype(np.uint8)
    return Rendered(image=image, text=text, boxes=boxes)
