"""Pictures without a plotting dependency: labelled image grids and loss curves (PIL only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of a uint8 (H, W, 3) image (tiny samples stay crisp)."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    pad: int = 4,
    min_cell: int = 96,
    title: str | None = None,
    scale: int | None = None,
) -> Image.Image:
    """Rows of uint8 (H, W, 3) images; rows may differ in size, and so may the images of a row
    (each is centred in its row and column; give ``scale`` then, so that one factor serves all).

    Small images are enlarged by an integer factor so the shorter side is at least
    ``min_cell`` pixels (or all by ``scale``, keeping relative sizes); each row is labelled on the
    left, columns on top. Every column is as
    wide as its widest image and images are centred in it, so a column stays one column
    (one class, say) across rows of different aspect ratios.
    """
    font = _font(12)
    scaled = []
    for row in rows:
        h, w = row[0].shape[:2]
        factor = scale or max(1, math.ceil(min_cell / min(h, w)))
        scaled.append([upscale(im, factor) for im in row])
    label_w = 0
    if row_labels:
        label_w = max(int(font.getlength(s)) for s in row_labels) + 2 * pad
    top = 18 if col_labels else 0
    top += 22 if title else 0
    columns = max(len(row) for row in scaled)
    col_w = [max(row[c].shape[1] for row in scaled if c < len(row)) for c in range(columns)]
    col_x = [label_w + pad + sum(w + pad for w in col_w[:c]) for c in range(columns)]
    width = label_w + sum(w + pad for w in col_w) + pad
    row_h = [max(im.shape[0] for im in row) for row in scaled]
    height = top + sum(h + pad for h in row_h) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=INK, font=_font(14))
    if col_labels:
        for c, name in enumerate(col_labels[:columns]):
            draw.text((col_x[c], top - 16), name[: max(3, col_w[c] // 7)], fill=INK, font=font)
    y = top + pad
    for r, row in enumerate(scaled):
        if row_labels:
            draw.text((pad, y + row_h[r] // 2 - 6), row_labels[r], fill=INK, font=font)
        for c, im in enumerate(row):
            canvas.paste(
                Image.fromarray(im), (col_x[c] + (col_w[c] - im.shape[1]) // 2, y + (row_h[r] - im.shape[0]) // 2)
            )
        y += row_h[r] + pad
    return canvas


def _smooth(values: np.ndarray, fraction: float) -> np.ndarray:
    """Centred moving average over about `fraction` of the points (narrower at the ends), so the smoothed
    curve does not lag behind a falling loss as an exponential average does."""
    half = int(len(values) * fraction / 2)
    if half == 0:
        return values.copy()
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(len(values))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(values))
    # At the ends the window shrinks symmetrically, so the first and last points stay where they are.
    reach = np.minimum(i - lo, hi - 1 - i)
    lo, hi = i - reach, i + reach + 1
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)


def loss_curve(
    steps: Sequence[float],
    losses: Sequence[float],
    title: str = "training loss",
    size: tuple[int, int] = (640, 360),
    smoothing: float = 0.04,
) -> Image.Image:
    """A line plot of loss against step: raw values light, a centred moving average over `smoothing` of the
    points dark."""
    steps_a, loss_a = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    W, H = size
    left, right, top, bottom = 60, 20, 30, 40
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    draw.text((left, 8), title, fill=INK, font=_font(14))
    if len(steps_a) == 0:
        draw.text((left, H // 2), "no data", fill=INK, font=font)
        return canvas
    x0, x1 = float(steps_a.min()), float(max(steps_a.max(), steps_a.min() + 1))
    y1 = float(np.percentile(loss_a, 99)) * 1.05
    y0 = min(0.0, float(loss_a.min()))

    def px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x0) / (x1 - x0)
        fy = (min(y, y1) - y0) / max(y1 - y0, 1e-12)
        return left + fx * (W - left - right), H - bottom - fy * (H - top - bottom)

    draw.rectangle([left, top, W - right, H - bottom], outline=INK)
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        _, yp = px(x0, yv)
        draw.line([left - 4, yp, left, yp], fill=INK)
        draw.text((4, yp - 7), f"{yv:.3g}", fill=INK, font=font)
        xv = x0 + (x1 - x0) * k / 4
        xp, _ = px(xv, y0)
        draw.line([xp, H - bottom, xp, H - bottom + 4], fill=INK)
        draw.text((xp - 12, H - bottom + 6), f"{xv:.0f}", fill=INK, font=font)
    draw.text((W // 2 - 15, H - 16), "step", fill=INK, font=font)
    if len(steps_a) > 1:
        draw.line([px(x, y) for x, y in zip(steps_a, loss_a)], fill=(170, 190, 230), width=1)
        draw.line([px(x, y) for x, y in zip(steps_a, _smooth(loss_a, smoothing))], fill=(20, 60, 160), width=2)
    return canvas


PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_x: bool = False,
    size: tuple[int, int] = (640, 400),
    marks: dict[str, tuple[float, float]] | None = None,
) -> Image.Image:
    """Lines with point markers, one per named series of (x, y), a legend, optional log-scaled x, and
    ``marks``: single labelled points (a reference setting)."""
    W, H = size
    left, right, top, bottom = 64, 150, 30, 44
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    draw.text((left, 8), title, fill=INK, font=_font(14))
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys)] + list((marks or {}).values())
    if not points:
        draw.text((left, H // 2), "no data", fill=INK, font=font)
        return canvas

    def fx(x: float) -> float:
        return math.log10(x) if log_x else x

    xs_all, ys_all = [fx(p[0]) for p in points], [p[1] for p in points]
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (fx(x) - x0) / (x1 - x0) * (W - left - right), H - bottom - (y - y0) / (y1 - y0) * (
            H - top - bottom
        )

    draw.rectangle([left, top, W - right, H - bottom], outline=INK)
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        _, yp = px(10**x0 if log_x else x0, yv)
        draw.line([left - 4, yp, left, yp], fill=INK)
        draw.text((4, yp - 7), f"{yv:.3g}", fill=INK, font=font)
        xv = x0 + (x1 - x0) * k / 4
        xp = left + k / 4 * (W - left - right)
        draw.line([xp, H - bottom, xp, H - bottom + 4], fill=INK)
        draw.text((xp - 12, H - bottom + 6), f"{10**xv if log_x else xv:.3g}", fill=INK, font=font)
    draw.text(((left + W - right) // 2 - 40, H - 18), xlabel + (" (log scale)" if log_x else ""), fill=INK, font=font)
    draw.text((4, top - 22), ylabel, fill=INK, font=font)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [px(x, y) for x, y in sorted(zip(xs, ys))]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for p in pts:
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
        draw.line([W - right + 10, top + 10 + 16 * i, W - right + 30, top + 10 + 16 * i], fill=colour, width=3)
        draw.text((W - right + 34, top + 3 + 16 * i), name, fill=INK, font=font)
    for j, (name, (x, y)) in enumerate((marks or {}).items()):
        p = px(x, y)
        draw.rectangle([p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4], outline=INK, width=2)
        draw.text((p[0] + 6, p[1] - 14 - 12 * j), name, fill=INK, font=font)
    return canvas
