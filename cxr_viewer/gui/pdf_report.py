"""Lay report pages out in a PDF with Qt's own writer (QPdfWriter + QPainter), one page per image.

The content comes from :mod:`cxr_viewer.clinical.report`; this module only draws it. QPainter on a
QPdfWriter is allowed outside the GUI thread (no widgets are involved), so the GUI runs
:func:`write_pdf_task` in a worker; it needs a QGuiApplication (the command line makes an
offscreen one).
"""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from typing import Generator, Sequence

import numpy as np
from PySide6.QtCore import QMarginsF, QPointF, QRectF, QSizeF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPageLayout, QPageSize, QPainter, QPdfWriter, QTextDocument

from cxr_viewer.clinical.report import ReportPage
from cxr_viewer.common.fileio import atomic_path
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress

DPI = 200
MARGIN_MM = 14.0


def _qimage(rgb: np.ndarray) -> QImage:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, w * 3, QImage.Format.Format_RGB888).copy()


def _html(page: ReportPage, index: int, count: int, when: str) -> tuple[str, str, str, str]:
    """(header, scores, model and card, footer) HTML blocks."""
    e = html.escape
    header_rows = "".join(
        f"<tr><td style='color:#555; padding-right:8px'>{e(k)}</td><td><b>{e(v)}</b></td></tr>"
        for k, v in page.header)
    top = (f"<div style='font-size:15pt'><b>{e(page.title)}</b></div>"
           f"<div style='color:#b00000; font-size:11pt'><b>{e(page.notice)}</b></div>"
           f"<table style='font-size:8.5pt; margin-top:4px'>{header_rows}</table>")
    scores = []
    for s in page.scores:
        if s.available:
            colour = "#b00000" if s.label.startswith("above threshold") else "#1a5e1a"
            scores.append(
                f"<p style='margin:0 0 8px 0'><b>{e(s.title)}</b><br>"
                f"<span style='font-size:16pt'>{e(s.value)}</span> "
                f"<span style='color:{colour}; font-size:11pt'><b>{e(s.label)}</b></span><br>"
                f"<span style='font-size:8pt'>{e(s.operating_point)}</span><br>"
                f"<span style='font-size:7.5pt; color:#555'>{e(s.meaning)}</span></p>")
        else:
            scores.append(f"<p style='margin:0 0 8px 0'><b>{e(s.title)}</b><br>"
                          f"<span style='color:#666; font-size:8pt'>{e(s.label)}</span></p>")
    right = (f"<div style='font-size:9pt'><div style='font-size:11pt'><b>Scores</b></div>"
             f"<div style='font-size:7.5pt; color:#555; margin-bottom:4px'>calibrated probabilities; label at the "
             f"model's operating point</div>{''.join(scores)}</div>")
    model = "<br>".join(e(line) for line in page.model_lines)
    card = "".join(f"<li>{e(line)}</li>" for line in page.card_lines)
    below = (f"<table width='100%' style='font-size:7.5pt'><tr>"
             f"<td width='38%' style='padding-right:10px'><div style='font-size:10pt'><b>Model</b></div>{model}</td>"
             f"<td><div style='font-size:10pt'><b>Model card summary</b></div>"
             f"<ul style='margin-left:-24px; margin-top:0'>{card}</ul></td></tr></table>")
    footer = (f"<div style='font-size:7.5pt; color:#444'><b style='color:#b00000'>{e(page.notice)}</b> "
              f"The scores are a research model's output, not a diagnosis; a clinician must read the image. "
              f"Generated {e(when)} by {e(page.software)}. Page {index + 1} of {count}.</div>")
    return top, right, below, footer


def _document(painter: QPainter, text: str, width: float) -> tuple[QTextDocument, float]:
    """A laid-out rich-text block ``width`` device units wide, and its scale (device units per point)."""
    doc = QTextDocument()
    font = QFont("DejaVu Sans")
    font.setPointSizeF(9)
    doc.setDefaultFont(font)
    doc.setDocumentMargin(0)
    doc.setHtml(text)
    # QTextDocument lays out in points at the painter's resolution: scale from 72 dpi to ours
    scale = painter.device().logicalDpiX() / 72.0
    doc.setTextWidth(width / scale)
    return doc, scale


def _measure(painter: QPainter, text: str, width: float) -> float:
    doc, scale = _document(painter, text, width)
    return doc.size().height() * scale


def _draw_html(painter: QPainter, text: str, rect: QRectF) -> float:
    """Draw rich text into ``rect`` (device units); returns the height used."""
    doc, scale = _document(painter, text, rect.width())
    painter.save()
    painter.translate(rect.topLeft())
    painter.scale(scale, scale)
    doc.drawContents(painter, QRectF(0, 0, rect.width() / scale, rect.height() / scale))
    painter.restore()
    return doc.size().height() * scale


def write_pdf_task(pages: Sequence[ReportPage], path: str,
                   cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, str]:
    """Write ``pages`` to ``path`` atomically (nothing half-written on failure or cancel)."""
    if not pages:
        raise ValueError("no pages to write")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with atomic_path(path) as tmp:
        writer = QPdfWriter(tmp)
        writer.setResolution(DPI)
        writer.setTitle(pages[0].title)
        writer.setCreator(pages[0].software)
        writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4), QPageLayout.Orientation.Portrait,
                                         QMarginsF(MARGIN_MM, MARGIN_MM, MARGIN_MM, MARGIN_MM),
                                         QPageLayout.Unit.Millimeter))
        painter = QPainter()
        if not painter.begin(writer):
            raise OSError(f"cannot write a PDF at {path}")
        try:
            for i, page in enumerate(pages):
                cancel.raise_if_cancelled()
                yield Progress("pdf", i, len(pages), os.path.basename(path))
                if i:
                    writer.newPage()
                _draw_page(painter, writer, page, i, len(pages), when)
        finally:
            painter.end()
    yield Progress("pdf", len(pages), len(pages), os.path.basename(path))
    return path


def _draw_page(painter: QPainter, writer: QPdfWriter, page: ReportPage, index: int, count: int, when: str) -> None:
    area = writer.pageLayout().paintRectPixels(writer.resolution())
    w, h = float(area.width()), float(area.height())
    top, right, below, footer = _html(page, index, count, when)
    gap = DPI * 0.08
    y = _draw_html(painter, top, QRectF(0, 0, w, h * 0.3)) + gap
    footer_h = DPI * 0.55
    caption = f"<div style='font-size:7.5pt; color:#444'>{html.escape(page.image_caption)}</div>"
    below_h = _measure(painter, below, w)
    # the scores column widens (the image narrows) until the scores, the model/card block and the
    # footer fit on the page: long reasons (outside intended use, not available) are never clipped
    for frac in (0.6, 0.55, 0.5, 0.45, 0.4):
        img_w = w * frac
        right_h = _measure(painter, right, w - img_w - gap * 2)
        if y + right_h + below_h + footer_h + 2 * gap <= h:
            break
    # the image takes what the header, caption, model/card block and footer leave (never clipped text)
    reserved = _measure(painter, caption, img_w) + below_h + footer_h + 4 * gap
    img_h = max(h * 0.25, min(h * 0.46, h - y - reserved))
    image = _qimage(page.rgb)
    fit = QSizeF(image.width(), image.height()).scaled(QSizeF(img_w, img_h), Qt.AspectRatioMode.KeepAspectRatio)
    painter.fillRect(QRectF(0, y, img_w, fit.height()), QColor("black"))
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
    painter.drawImage(QRectF(QPointF((img_w - fit.width()) / 2, y), fit), image)
    caption_y = y + fit.height() + DPI * 0.03
    caption_h = _draw_html(painter, caption, QRectF(0, caption_y, img_w, max(DPI * 0.4, _measure(painter, caption, img_w))))
    right_w = w - img_w - gap * 2
    right_h = _measure(painter, right, right_w)
    _draw_html(painter, right, QRectF(img_w + gap * 2, y, right_w, right_h))
    y = max(caption_y + caption_h, y + right_h) + gap  # below both the image and the scores
    _draw_html(painter, below, QRectF(0, y, w, h - footer_h - y))
    painter.setPen(QColor("#b00000"))
    painter.drawLine(QPointF(0, h - footer_h), QPointF(w, h - footer_h))
    _draw_html(painter, footer, QRectF(0, h - footer_h + gap / 2, w, footer_h))
