"""PNG / JPEG / TIFF / BMP through Pillow, converted to one grey channel for display."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.io.dicom import MAX_FRAME_PIXELS, luma, regular_file_size
from cxr_viewer.io.study import ImageMeta, ImageRef

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


#: Leading bytes of the raster formats read here (PNG, JPEG, TIFF little/big endian, BMP).
RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")


def sniff_kind(path: str) -> str | None:
    """"dicom" or "raster" by content, whatever the file is called; None when the first bytes
    say neither (or the file cannot be read: the reader reports why)."""
    try:
        if regular_file_size(path) == 0:
            return None
        with open(path, "rb") as f:
            head = f.read(132)
    except (OSError, ImageOpenError):
        return None
    if head[128:132] == b"DICM":  # checked first: a DICOM preamble may hold a TIFF header
        return "dicom"
    if head.startswith(RASTER_MAGIC):
        return "raster"
    return None


def _open(path: str) -> Image.Image:
    if regular_file_size(path) == 0:
        raise ImageOpenError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageOpenError("image too large to display (Pillow's decompression-bomb limit)") from None


def _bits(mode: str) -> int:
    return {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8,
            "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}.get(mode, 8)


def read_header(path: str) -> ImageRef:
    """Index a raster image by its header (Pillow decodes lazily)."""
    try:
        with _open(path) as im:
            width, height = im.size
            frames = int(getattr(im, "n_frames", 1) or 1)
            mode, fmt = im.mode, im.format or "image"
    except ImageOpenError:
        raise
    except OSError as exc:
        raise ImageOpenError(f"not a readable image: {exc.strerror or str(exc).splitlines()[0]}") from None
    except Exception as exc:
        raise ImageOpenError(f"not a readable image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if width * height > MAX_FRAME_PIXELS:
        raise ImageOpenError(f"image too large to display: {width} x {height} px (limit {MAX_FRAME_PIXELS:,} px)")
    if width <= 0 or height <= 0:
        raise ImageOpenError(f"invalid image size {width} x {height}")
    meta = ImageMeta(
        study_description=os.path.basename(os.path.dirname(os.path.abspath(path))),
        series_description=f"{fmt} images",
        modality="OT",
        rows=height,
        cols=width,
        frames=frames,
        photometric=f"{fmt} {mode}",
        bits_stored=_bits(mode),
        transfer_syntax=fmt,
    )
    return ImageRef(path=path, kind="raster", meta=meta)


def to_grey(im: Image.Image) -> np.ndarray:
    """One grey channel: 8/16-bit and float greys kept, colour and palette via BT.601 luma.

    Transparent pixels (RGBA, LA, palette with transparency) are composited onto black, the
    background of a radiograph.
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    if mode in ("I", "F", "L"):
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "PA", "RGBA"):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return np.rint(luma(rgba[..., :3] * alpha)).astype(np.uint8)
    return np.rint(luma(np.asarray(im.convert("RGB")))).astype(np.uint8)


def decode_frame(path: str, frame: int = 0) -> np.ndarray:
    """Decode one frame (page) of a raster image as a 2-D grey array."""
    try:
        with _open(path) as im:
            if frame:
                im.seek(frame)
            im.load()
            im = ImageOps.exif_transpose(im) if im.format == "JPEG" else im
            return np.ascontiguousarray(to_grey(im))
    except ImageOpenError:
        raise
    except MemoryError:
        raise ImageOpenError("not enough memory to decode this image") from None
    except EOFError:
        raise ImageOpenError(f"frame {frame} not found in the file") from None
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageOpenError(f"cannot decode image: {text}") from None
