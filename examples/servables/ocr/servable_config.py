"""Reads a line of digits from an image: a detector model and a recognizer model chained by four Python stages.

This is the shape of MindSpore Serving's OCR composition (a text detector, then a recogniser on the detected
regions), on two small models that `examples/build_models.py` builds:

* `detector.onnx`: `image` [batch, 1, 48, 384] (ink = 1.0) -> `text_map` [batch, 1, 48, 384] (probability that a
  pixel belongs to text: a 3x3 box filter and a sigmoid) and `column_score` [batch, 1, 384] (its maximum per column).
* `recognizer.onnx`: `cells` [batch, 16, 7, 5] (up to 16 characters, each resampled to the font's 7x5 grid) ->
  `probs` [batch, 16, 10]: cosine similarity to the ten digit templates, through a softmax.

The method `read` takes PNG/JPEG bytes of dark digits on a light background (at most 384x48 pixels, at most 16
digits, at least 3 blank pixels between two digits) and returns the text, the lowest character probability and one
box (x0, y0, x1, y1) per character.
"""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from rustserve.server import register

CANVAS_HEIGHT, CANVAS_WIDTH = 48, 384  # the detector's input size
MAX_CHARS = 16  # character slots of the recognizer's input
CELL_ROWS, CELL_COLS = 7, 5  # the font's grid
CHARSET = "0123456789"
THRESHOLD = 0.5

detector = register.declare_model(
    model_file="detector.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8
)
recognizer = register.declare_model(
    model_file="recognizer.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8
)


def open_image(image: np.ndarray | bytes) -> Image.Image:
    """Opens the bytes of a PNG/JPEG image; a clear error for anything else."""
    if isinstance(image, str):
        raise TypeError("expected the bytes of a PNG or JPEG image, got a string")
    data = image.tobytes() if isinstance(image, np.ndarray) else bytes(image)
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"expected a PNG or JPEG image, got {len(data)} bytes that are neither") from None


def decode_image(image: np.ndarray | bytes) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: decodes the image, binarizes it (ink = dark) and pads it into the detector's canvas.

    Returns:
        The detector input (float32 [1, 48, 384]) and the binary ink image at its own size (uint8 [h, w]).
    """
    with open_image(image) as picture:
        gray = np.asarray(picture.convert("L"), dtype=np.uint8)
    height, width = gray.shape
    if height > CANVAS_HEIGHT or width > CANVAS_WIDTH:
        raise ValueError(f"image is {width}x{height} pixels, the detector reads at most {CANVAS_WIDTH}x{CANVAS_HEIGHT}")
    ink = (gray < 128).astype(np.uint8)
    canvas = np.zeros((1, CANVAS_HEIGHT, CANVAS_WIDTH), dtype=np.float32)
    canvas[0, :height, :width] = ink
    return canvas, ink


def find_boxes(text_map: np.ndarray, column_score: np.ndarray) -> tuple[np.ndarray, np.int32]:
    """Stage 2: turns the detector's maps into one region per character (a run of text columns).

    Returns:
        Regions (int32 [n, 4]: x0, y0, x1, y1, exclusive ends) and their count.
    """
    columns = np.concatenate(([False], column_score.reshape(-1) > THRESHOLD, [False]))
    edges = np.flatnonzero(columns[1:] != columns[:-1])  # alternating run starts and ends
    text_rows = text_map.reshape(CANVAS_HEIGHT, CANVAS_WIDTH) > THRESHOLD
    boxes = []
    for x0, x1 in zip(edges[::2], edges[1::2], strict=True):
        rows = np.flatnonzero(text_rows[:, x0:x1].any(axis=1))
        boxes.append((x0, rows[0], x1, rows[-1] + 1))
    return np.array(boxes, dtype=np.int32).reshape(-1, 4), np.int32(len(boxes))


def crop_characters(ink: np.ndarray, regions: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stage 3: cuts each character's ink out of its region and resamples it to the font's 7x5 grid.

    Returns:
        The recognizer input (float32 [16, 7, 5], unused slots zero) and the characters' tight ink boxes
        (int32 [n, 4]).
    """
    if int(count) > MAX_CHARS:
        raise ValueError(f"found {int(count)} characters, the recognizer reads at most {MAX_CHARS}")
    cells = np.zeros((MAX_CHARS, CELL_ROWS, CELL_COLS), dtype=np.float32)
    boxes = np.zeros((int(count), 4), dtype=np.int32)
    for slot, (x0, y0, x1, y1) in enumerate(regions[: int(count)]):
        part = ink[y0:y1, x0:x1]
        rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        glyph = part[top:bottom, left:right]
        boxes[slot] = (x0 + left, y0 + top, x0 + right, y0 + bottom)
        # Every glyph is 7 font pixels tall: the height gives the scale, the width how many font columns it spans.
        scale = glyph.shape[0] / CELL_ROWS
        width = min(max(round(glyph.shape[1] / scale), 1), CELL_COLS)
        row_index = ((np.arange(CELL_ROWS) + 0.5) * glyph.shape[0] / CELL_ROWS).astype(int)
        col_index = ((np.arange(width) + 0.5) * glyph.shape[1] / width).astype(int)
        offset = (CELL_COLS - width) // 2
        cells[slot, :, offset : offset + width] = glyph[np.ix_(row_index, col_index)]
    return cells, boxes


def read_text(probs: np.ndarray, boxes: np.ndarray) -> tuple[str, np.float32, np.ndarray]:
    """Stage 4: the most probable character per slot, joined; the lowest of their probabilities; the boxes."""
    probs = probs[: len(boxes)]
    best = probs.argmax(axis=1)
    text = "".join(CHARSET[index] for index in best)
    confidence = np.float32(probs.max(axis=1).min()) if len(boxes) else np.float32(0.0)
    return text, confidence, boxes


@register.register_method(output_names=["text", "confidence", "boxes"])
def read(image):
    det_input, ink = register.add_stage(decode_image, image, outputs_count=2)
    text_map, column_score = register.add_stage(detector, det_input, outputs_count=2)
    regions, count = register.add_stage(find_boxes, text_map, column_score, outputs_count=2)
    cells, boxes = register.add_stage(crop_characters, ink, regions, count, outputs_count=2)
    probs = register.add_stage(recognizer, cells, outputs_count=1)
    text, confidence, boxes = register.add_stage(read_text, probs, boxes, outputs_count=3)
    return text, confidence, boxes
