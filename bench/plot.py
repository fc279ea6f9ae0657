"""A dependency-free PNG line chart (zlib + struct): latency percentiles against concurrency, log-log.

No matplotlib: the bench must run offline and add nothing to the agent's dependencies. Each panel draws one line
per series for p50 (solid) and p99 (dashed), decade grid lines, and labels in a built-in 3x5 pixel font.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (215, 215, 215)
PALETTE: tuple[Color, ...] = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
                              (140, 86, 75), (23, 190, 207), (127, 127, 127))  # fmt: skip

# 3 columns x 5 rows per glyph, row by row; unknown characters draw as a blank.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111", "J": "001001001101010",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    ".": "000000000000010", "-": "000000111000000", "/": "001001010100100", ":": "000010000010000",
    "(": "010100100100010", ")": "010001001001010", "%": "101001010100101", ",": "000000000010100",
    "+": "000010111010000", "=": "000111000111000", "_": "000000000000111",
}  # fmt: skip


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def set(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            offset = 3 * (y * self.width + x)
            self.pixels[offset : offset + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, *, dashed: bool = False, width: int = 1) -> None:
        """Bresenham; a dashed line draws 6 pixels of every 10 along its length."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error, step = dx + dy, 0
        while True:
            if not dashed or step % 10 < 6:
                for offset in range(width):
                    self.set(x0 + offset, y0, color)
                    self.set(x0, y0 + offset, color)
            if (x0, y0) == (x1, y1):
                return
            doubled = 2 * error
            if doubled >= dy:
                error += dy
                x0 += sx
            if doubled <= dx:
                error += dx
                y0 += sy
            step += 1

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 2) -> None:
        for index, char in enumerate(text.upper()):
            glyph = _FONT.get(char, "")
            for bit, on in enumerate(glyph):
                if on == "1":
                    gx, gy = x + (index * 4 + bit % 3) * scale, y + (bit // 3) * scale
                    for ox in range(scale):
                        for oy in range(scale):
                            self.set(gx + ox, gy + oy, color)

    def png(self) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        stride = 3 * self.width
        rows = b"".join(b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
        )


def text_width(text: str, scale: int = 2) -> int:
    return len(text) * 4 * scale


@dataclass
class Line:
    """One series: (x, p50, p99) points, latencies in seconds."""

    label: str
    points: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class Panel:
    title: str
    x_label: str
    lines: list[Line]


def _decades(values: list[float]) -> tuple[int, int]:
    low = math.floor(math.log10(min(values)))
    high = math.ceil(math.log10(max(values)))
    return low, max(high, low + 1)


def draw_panel(canvas: Canvas, panel: Panel, *, left: int, top: int, width: int, height: int) -> None:
    lines = [line for line in panel.lines if line.points]
    if not lines:
        return
    xs = sorted({point[0] for line in lines for point in line.points})
    ys = [value for line in lines for point in line.points for value in point[1:] if value > 0]
    y_low, y_high = _decades([value * 1000 for value in ys])
    x_low, x_high = math.log10(xs[0]), math.log10(xs[-1]) if xs[-1] > xs[0] else math.log10(xs[0]) + 1
    plot_left, plot_top = left + 70, top + 30
    plot_width, plot_height = width - 90, height - 30 - 70 - 14 * ((len(lines) + 1) // 2)

    def px(x: float) -> int:
        return plot_left + round((math.log10(x) - x_low) / (x_high - x_low) * plot_width)

    def py(seconds: float) -> int:
        fraction = (math.log10(seconds * 1000) - y_low) / (y_high - y_low)
        return plot_top + plot_height - round(fraction * plot_height)

    canvas.text(left + (width - text_width(panel.title)) // 2, top + 6, panel.title)
    for exponent in range(y_low, y_high + 1):
        y = py(10.0**exponent / 1000)
        canvas.line(plot_left, y, plot_left + plot_width, y, GREY)
        label = f"{10.0**exponent:g}"
        canvas.text(plot_left - 8 - text_width(label), y - 5, label)
    for x_value in xs:
        x = px(x_value)
        canvas.line(x, plot_top, x, plot_top + plot_height, GREY)
        label = f"{x_value:g}"
        canvas.text(x - text_width(label) // 2, plot_top + plot_height + 8, label)
    canvas.line(plot_left, plot_top, plot_left, plot_top + plot_height, BLACK)
    canvas.line(plot_left, plot_top + plot_height, plot_left + plot_width, plot_top + plot_height, BLACK)
    canvas.text(plot_left + (plot_width - text_width(panel.x_label)) // 2, plot_top + plot_height + 26, panel.x_label)
    canvas.text(left + 4, plot_top - 22, "MS")

    legend_top = plot_top + plot_height + 48
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        points = sorted(line.points)
        for (xa, p50a, p99a), (xb, p50b, p99b) in itertools.pairwise(points):
            canvas.line(px(xa), py(p50a), px(xb), py(p50b), color, width=2)
            canvas.line(px(xa), py(p99a), px(xb), py(p99b), color, dashed=True, width=2)
        for x_value, p50, p99 in points:
            for dx in range(-2, 3):
                for dy in range(-2, 3):
                    canvas.set(px(x_value) + dx, py(p50) + dy, color)
            canvas.set(px(x_value), py(p99), color)
        column, row = index % 2, index // 2
        lx, ly = left + 10 + column * (width // 2), legend_top + row * 14
        canvas.line(lx, ly + 4, lx + 20, ly + 4, color, width=2)
        canvas.text(lx + 26, ly, line.label)


def render(panels: list[Panel], path: Path, *, panel_width: int = 620, height: int = 520, note: str = "") -> None:
    canvas = Canvas(panel_width * len(panels), height + (20 if note else 0))
    for index, panel in enumerate(panels):
        draw_panel(canvas, panel, left=index * panel_width, top=0, width=panel_width, height=height)
    if note:
        canvas.text(10, height + 2, note)
    path.write_bytes(canvas.png())
