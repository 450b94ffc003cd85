"""Thumbnails for the study browser, made off the GUI thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Sequence

import numpy as np
from PIL import Image

from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken
from cxr_viewer.io.display import display_mapping, render_uint8
from cxr_viewer.io.image import load_image
from cxr_viewer.io.study import ImageRef

THUMB_SIZE = 96


@dataclass(frozen=True, eq=False)
class Thumbnail:
    path: str
    pixels: np.ndarray | None  # uint8 (h, w), at most THUMB_SIZE on the long side
    error: str = ""


def make_thumbnail(ref: ImageRef, size: int = THUMB_SIZE) -> np.ndarray:
    """The first frame in its default display, scaled to fit ``size`` px."""
    image = load_image(ref, 0)
    pixels = render_uint8(display_mapping(image.values, image.default_voi(), image.monochrome1))
    pil = Image.fromarray(pixels)
    pil.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(pil))


def thumbnails_task(refs: Sequence[ImageRef], cancel: CancelToken = NEVER_CANCELLED
                    ) -> Generator[Thumbnail, None, int]:
    """Task: yield one Thumbnail per image (errors included); returns the count."""
    for ref in refs:
        cancel.raise_if_cancelled()
        try:
            yield Thumbnail(ref.path, make_thumbnail(ref))
        except ImageOpenError as exc:
            yield Thumbnail(ref.path, None, str(exc))
        except MemoryError:
            yield Thumbnail(ref.path, None, "not enough memory to decode this image")
        except Exception as exc:  # one bad file never stops the browser's thumbnails
            text = str(exc).strip().splitlines()
            yield Thumbnail(ref.path, None, f"cannot make a thumbnail: {text[0][:300] if text else type(exc).__name__}")
    return len(refs)
