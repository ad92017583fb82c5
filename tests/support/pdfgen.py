"""Real PDF files for tests, made with reportlab (drawing) and pypdf (metadata, encryption).

Text is drawn with the standard Helvetica font, which covers Latin-1 only: keep test text to that range.
Output is deterministic (reportlab's invariant mode, fixed seeds) except the random file identifiers pypdf
puts into encrypted files.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pypdf import PdfReader, PdfWriter

_FONT = "Helvetica"
_FONT_SIZE = 11.0
_LEADING = 14.0
_MARGIN = 72.0
_A4 = (595.2755905511812, 841.8897637795277)


def _wrap(text: str, width: float) -> list[str]:
    """Lines of ``text`` no wider than ``width`` points; explicit newlines are kept."""
    from reportlab.lib.utils import simpleSplit

    lines: list[str] = []
    for paragraph in text.split("\n"):
        split: list[str] = simpleSplit(paragraph, _FONT, _FONT_SIZE, width)
        lines.extend(split or [""])
    return lines


def _draw_lines(canvas: Any, lines: Sequence[str], x: float, top: float) -> None:
    obj: Any = canvas.beginText(x, top)
    obj.setFont(_FONT, _FONT_SIZE, _LEADING)
    for line in lines:
        obj.textLine(line)
    canvas.drawText(obj)


def _page_height(line_count: int) -> float:
    """A4, or taller when the text needs it, so every word lands on its page."""
    return max(_A4[1], 2 * _MARGIN + line_count * _LEADING)


def _finish(pdf_bytes: bytes, path: Path, title: str | None, encrypt: dict[str, Any] | None = None) -> Path:
    """Rewrite reportlab's output with pypdf: the exact metadata asked for (reportlab always writes a
    placeholder title, "untitled"), and optionally encryption."""
    reader = PdfReader(io.BytesIO(pdf_bytes))
    writer = PdfWriter()
    for page in reader.pages:
        writer.add_page(page)
    writer.metadata = None
    if title is not None:
        writer.add_metadata({"/Title": title})
    if encrypt is not None:
        writer.encrypt(**encrypt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def _text_pdf_bytes(pages: Sequence[str]) -> bytes:
    from reportlab.pdfgen import canvas as rl_canvas

    buffer = io.BytesIO()
    canvas: Any = rl_canvas.Canvas(buffer, pagesize=_A4, invariant=1)
    width = _A4[0] - 2 * _MARGIN
    for text in pages:
        lines = _wrap(text, width) if text else []
        height = _page_height(len(lines))
        canvas.setPageSize((_A4[0], height))
        if lines:
            _draw_lines(canvas, lines, _MARGIN, height - _MARGIN)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def text_pdf(path: Path | str, pages: list[str], title: str | None = None) -> Path:
    """A PDF whose page ``i`` holds ``pages[i]`` (wrapped; an empty string makes a blank page).

    With ``title`` None the file has no document information dictionary at all.
    """
    return _finish(_text_pdf_bytes(pages), Path(path), title)


def two_column_pdf(path: Path | str, pages: list[tuple[str, str]], title: str | None = None) -> Path:
    """A PDF with two text columns per page: the left one drawn first, then the right one."""
    from reportlab.pdfgen import canvas as rl_canvas

    buffer = io.BytesIO()
    canvas: Any = rl_canvas.Canvas(buffer, pagesize=_A4, invariant=1)
    gutter = 24.0
    column = (_A4[0] - 2 * _MARGIN - gutter) / 2
    for left, right in pages:
        left_lines = _wrap(left, column)
        right_lines = _wrap(right, column)
        height = _page_height(max(len(left_lines), len(right_lines)))
        canvas.setPageSize((_A4[0], height))
        _draw_lines(canvas, left_lines, _MARGIN, height - _MARGIN)
        _draw_lines(canvas, right_lines, _MARGIN + column + gutter, height - _MARGIN)
        canvas.showPage()
    canvas.save()
    return _finish(buffer.getvalue(), Path(path), title)


def encrypted_pdf(path: Path | str, user_password: str, pages: list[str], title: str | None = None) -> Path:
    """AES-256 encrypted: the user password is needed to open it."""
    encrypt = {
        "user_password": user_password,
        "owner_password": user_password + "-owner",
        "algorithm": "AES-256",
    }
    return _finish(_text_pdf_bytes(pages), Path(path), title, encrypt)


def owner_only_encrypted_pdf(path: Path | str, owner_password: str, pages: list[str], title: str | None = None) -> Path:
    """AES-256 encrypted with an empty user password: anyone can open it, only permissions are restricted."""
    encrypt = {"user_password": "", "owner_password": owner_password, "algorithm": "AES-256"}
    return _finish(_text_pdf_bytes(pages), Path(path), title, encrypt)


def truncated_pdf(path: Path | str, source_pdf: Path | str, keep_fraction: float = 0.6) -> Path:
    """The first ``keep_fraction`` of the bytes of ``source_pdf``: a download or copy cut short."""
    if not 0 < keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction}")
    data = Path(source_pdf).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def image_only_pdf(path: Path | str, pages: int = 2) -> Path:
    """Pages with vector shapes and an embedded raster image, and no text at all (a scan, to a parser)."""
    from PIL import Image
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas as rl_canvas

    rng = random.Random(1234)
    buffer = io.BytesIO()
    canvas: Any = rl_canvas.Canvas(buffer, pagesize=_A4, invariant=1)
    for number in range(pages):
        image = Image.new("RGB", (64, 48))
        image.putdata([(rng.randrange(256), rng.randrange(256), (number * 40) % 256) for _ in range(64 * 48)])
        canvas.drawImage(ImageReader(image), _MARGIN, 400, width=256, height=192)
        canvas.setFillColorRGB(0.2, 0.4, 0.6)
        canvas.rect(_MARGIN, 200, 200, 100, fill=1)
        canvas.circle(400, 250, 50 + number * 5, fill=0)
        canvas.line(_MARGIN, 150, 500, 150)
        canvas.showPage()
    canvas.save()
    return _finish(buffer.getvalue(), Path(path), None)


def not_a_pdf(path: Path | str) -> Path:
    """A plain text file with a .pdf name."""
    path = Path(path)
    path.write_text("This is not a PDF at all, just text saved under the wrong name.\n" * 20)
    return path


def garbage_pdf(path: Path | str, size: int = 8192) -> Path:
    """A PDF header, random bytes, and an end marker: passes a magic-number sniff, cannot be parsed."""
    rng = random.Random(42)
    body = rng.randbytes(size)
    path = Path(path)
    path.write_bytes(b"%PDF-1.7\n" + body + b"\n%%EOF\n")
    return path
