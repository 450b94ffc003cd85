"""What a printed report page says, as plain data (Qt-free).

The PDF writer in ``cxr_viewer.gui.pdf_report`` only lays these pages out; everything a page
states (header, scores, operating points, model and model-card lines, the notice) is decided
here, so it is the same for the GUI and the command line and testable without a display.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cxr_viewer import RESEARCH_NOTICE, __version__
from cxr_viewer.ai.inference import HeadScore, ScoreResult
from cxr_viewer.ai.model import ModelMeta
from cxr_viewer.io.image import LoadedImage

REPORT_TITLE = "Chest X-ray AI findings (research)"
#: What a de-identified page says about its dates (PS3.15 Modified Dates option, see clinical.deid).
DATES_LINE = ("shifted by one random whole-day offset per patient: order and intervals between studies are "
              "kept, the calendar dates are not real; times unchanged")


@dataclass(frozen=True)
class ScoreLine:
    title: str
    available: bool
    value: str  # "0.873" or "not available"
    label: str  # "above threshold" / "below threshold" (never "positive": it reads as a diagnosis) / the reason
    operating_point: str = ""
    meaning: str = ""


@dataclass(frozen=True, eq=False)
class ReportPage:
    header: tuple[tuple[str, str], ...]
    deidentified: bool
    rgb: np.ndarray  # (H, W, 3) uint8: the image as shown, with the heatmap
    image_caption: str
    scores: tuple[ScoreLine, ...]
    model_lines: tuple[str, ...]
    card_lines: tuple[str, ...]
    title: str = REPORT_TITLE
    notice: str = RESEARCH_NOTICE
    software: str = f"cxr_viewer {__version__}"


def _name(value) -> str:
    text = str(value or "")
    return text.replace("^", " ").strip()


def _date(value) -> str:
    """A DA value as YYYY-MM-DD (anything else as it is)."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 and text.isdigit() else text


def header_items(ds, path: str, deidentified: bool) -> tuple[tuple[str, str], ...]:
    """Patient and study lines from a DICOM header (already de-identified when asked), or the file."""
    if ds is None:  # a PNG/JPEG: no patient data at all, only the file (its name may identify)
        shown = "(file name withheld: de-identified)" if deidentified else os.path.basename(path)
        return (("Source", shown), ("Patient", "not recorded in PNG/JPEG files"))
    g = ds.get
    date, birth = (_date(g(k, "")) for k in ("StudyDate", "PatientBirthDate"))
    items = [
        ("Patient name", _name(g("PatientName", ""))),
        ("Patient ID", str(g("PatientID", "") or "")),
        ("Sex / age", " / ".join(v for v in (str(g("PatientSex", "") or ""), str(g("PatientAge", "") or "")) if v)),
        ("Birth date", birth),
        ("Study date", date),
        ("Study", str(g("StudyDescription", "") or "")),
        ("Accession", str(g("AccessionNumber", "") or "")),
        ("Modality / view", " / ".join(v for v in (str(g("Modality", "") or ""), str(g("ViewPosition", "") or "")) if v)),
        ("Institution", str(g("InstitutionName", "") or "")),
    ]
    if deidentified:  # a dummy date (0001-01-01) is a removed date, not a date
        items = [(k, "removed" if v in ("00010101", "0001-01-01") else v) for k, v in items]
        method = g("DeidentificationMethod", "") or "PS3.15 basic profile"
        if not isinstance(method, str):  # multi-valued: the first value names the profile
            method = str(list(method)[0]) if len(method) else "PS3.15 basic profile"
        items.insert(0, ("De-identified", f"yes: {method}"))
        if str(g("LongitudinalTemporalInformationModified", "") or "").upper() == "MODIFIED":
            items = [(k, f"{v} (shifted)" if k in ("Birth date", "Study date") and v and v != "removed" else v)
                     for k, v in items]
            items.insert(1, ("Dates", DATES_LINE))
    return tuple((k, v if v else "-") for k, v in items)


def _percent(x: float | None) -> str:
    return "?" if x is None else f"{x:.3f}"


def score_lines(result: ScoreResult) -> tuple[ScoreLine, ...]:
    lines = []
    for hs in result.heads:
        lines.append(_score_line(hs))
    return tuple(lines)


def _score_line(hs: HeadScore) -> ScoreLine:
    if not hs.available or hs.probability is None:
        value = "not scored" if hs.status == "outside_intended_use" else "not available"
        return ScoreLine(hs.title, False, value, hs.reason or "not available", meaning=hs.meaning)
    op = f"threshold: probability {hs.threshold:.3f}" if hs.threshold is not None else ""
    if hs.sensitivity is not None and hs.specificity is not None:
        op += f" (validation sensitivity {_percent(hs.sensitivity)}, specificity {_percent(hs.specificity)})"
    label = "above threshold" if hs.positive else "below threshold"
    if hs.positive and hs.location is not None:
        label += "; marked on the image"
    if hs.status == "scored_outside_intended_use":
        label += "; OUTSIDE INTENDED USE: " + hs.reason.split(": ", 1)[-1]
    return ScoreLine(hs.title, True, f"{hs.probability:.3f}", label, op, hs.meaning)


def model_card_summary(meta: ModelMeta) -> tuple[str, ...]:
    """A few lines of the model card: data, validation figures with CIs, what is not known."""
    out: list[str] = []
    tr = meta.training or {}
    counts = tr.get("train_counts")
    if counts:
        out.append("Trained on " + ", ".join(f"{n} {k}" for k, n in counts.items())
                   + f" images ({tr.get('init', 'initialisation not recorded')}).")
    if tr.get("validation"):
        out.append(f"Validation: {tr['validation']}.")
    for head, m in (meta.metrics.get("validation") or {}).items():
        if not meta.heads.get(head) or not meta.heads[head].trained:
            continue
        ci = m.get("auroc_ci95") or [None, None]
        ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci[0] is not None else ""
        out.append(f"{head}: validation AUROC {m['auroc']:.3f}{ci_text}, n = {m['n']} "
                   f"({m['positives']} positive); accuracy {m['accuracy']:.3f} vs {m['majority_class_accuracy']:.3f} "
                   f"for always answering the majority class.")
    untrained = [h for h, info in meta.heads.items() if not info.trained]
    if untrained:
        out.append(f"No score is shown for: {', '.join(untrained)} (see the scores above for why).")
    out.append("Not measured on the official held-out test split: expect lower specificity on other "
               "hospitals' images.")
    return tuple(out)


def model_lines(result: ScoreResult, meta: ModelMeta | None) -> tuple[str, ...]:
    lines = [f"Model: {result.model_name} (version {result.model_version})",
             f"Weights SHA-256: {result.model_sha256}",
             f"Run on: {result.device or 'unknown device'}"]
    if result.companion:  # the second network that scored a head (the nodule/mass model)
        name, version, sha = result.companion
        lines[2:2] = [f"Nodule/mass model: {name} (version {version})", f"Nodule/mass model SHA-256: {sha}"]
    if meta is not None and meta.created:
        lines.append(f"Model created: {meta.created}")
    return tuple(lines)


def build_page(image: LoadedImage, result: ScoreResult, meta: ModelMeta | None, *, header_ds=None,
               deidentified: bool = False, heatmap_head: str | None = "auto", voi=None,
               opacity: float = 0.5, annotations=()) -> ReportPage:
    """One page: ``header_ds`` is the (already de-identified, if asked) DICOM header or None;
    ``annotations`` (the user's rulers, ROIs, arrows, texts) are drawn on the image and listed."""
    from cxr_viewer.ai.overlay import composite_rgb, pick_heatmap_head
    from cxr_viewer.clinical.finding_marks import MARK_TITLES, draw_finding_boxes, finding_marks, mark_line

    head = pick_heatmap_head(result, heatmap_head)
    rgb = composite_rgb(image, result.heatmaps.get(head) if head else None, voi=voi, opacity=opacity)
    rgb = draw_finding_boxes(rgb, result)
    if head in MARK_TITLES:
        caption = f"Heatmap: {result.head(head).title} (the nodule/mass model's probability per cell)"
    elif head:
        caption = f"Heatmap: {result.head(head).title} (Grad-CAM, where the score comes from)"
    else:
        caption = "No heatmap (no trained head)"
    frames = f", frame {image.frame + 1} of {image.ref.frames}" if image.ref.frames > 1 else ""
    caption += f"; {image.shape[1]} x {image.shape[0]} px{frames}"
    marks = finding_marks(result, tuple(image.shape[:2]))
    if marks:
        caption += ". " + "; ".join(mark_line(m) for m in marks) + " (orange box)"
    if annotations:
        from cxr_viewer.clinical.annotation_render import annotation_summary, draw_annotations

        rgb = draw_annotations(rgb, annotations, image)
        caption += ". Annotations (user): " + "; ".join(annotation_summary(annotations, image))
    return ReportPage(header_items(header_ds, image.ref.path, deidentified), deidentified, rgb, caption,
                      score_lines(result), model_lines(result, meta),
                      model_card_summary(meta) if meta is not None else ())
