"""Read a PNG's pixels without an imaging library: enough for Chromium's screenshots.

Chromium writes 8-bit RGB or RGBA, non-interlaced; anything else is refused,
so a test never measures a misread image.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Image", "read_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {2: 3, 6: 4}  # colour type -> bytes per pixel (8-bit samples)


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    #: unfiltered rows, ``width * channels`` bytes each
    rows: list[bytes]

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        row = self.rows[y]
        start = x * self.channels
        return row[start], row[start + 1], row[start + 2]

    def colours(self, *, step: int = 1) -> dict[tuple[int, int, int], int]:
        """How many pixels have each RGB colour (every ``step``-th pixel each way)."""
        counts: dict[tuple[int, int, int], int] = {}
        for y in range(0, self.height, step):
            row = self.rows[y]
            for x in range(0, self.width, step):
                start = x * self.channels
                colour = (row[start], row[start + 1], row[start + 2])
                counts[colour] = counts.get(colour, 0) + 1
        return counts


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(kind: int, line: bytearray, previous: bytes, bpp: int) -> bytes:
    if kind == 0:
        return bytes(line)
    if kind == 2:
        return bytes((value + above) & 0xFF for value, above in zip(line, previous, strict=True))
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        above = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + above) >> 1)) & 0xFF
        elif kind == 4:
            corner = previous[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + _paeth(left, above, corner)) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter {kind}")
    return bytes(line)


def read_png(path: Path) -> Image:
    data = path.read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path} is not a PNG")
    offset = len(_SIGNATURE)
    header: tuple[int, ...] = ()
    compressed = b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}")
    channels = _CHANNELS[colour]
    stride = width * channels
    raw = zlib.decompress(compressed)
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(
            raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
        )
        rows.append(row)
        previous = row
    return Image(width=width, height=height, channels=channels, rows=rows)
