"""Decoding compressed pixel data without letting a native decoder take the process down.

pydicom tries its pixel-data plugins in turn. Most raise Python errors on bad input
(pylibjpeg-openjpeg, Pillow, pylibjpeg-rle, pydicom's own), but GDCM aborts the whole process
(an uncaught C++ exception, SIGABRT) when the header contradicts the codestream, for example a
JPEG 2000 frame labelled RGB, or a JPEG frame with BitsAllocated 32. So here:

1. the header is checked against itself and against the codestream (JPEG SOF, JPEG 2000 SIZ)
   before any plugin sees it, and a contradiction is a one-line :class:`ImageOpenError`;
2. the plugins that raise Python errors run in this process, one chosen by name (no silent
   fall-through to the next plugin);
3. GDCM, needed here only for JPEG Lossless, JPEG-LS and 12-bit JPEG, runs in a child process
   (this interpreter, one worker kept warm, arrays passed as raw bytes), so a crash there is reported as "the
   decoder crashed on this file" and the viewer or batch goes on.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import struct
import subprocess
import sys
import threading

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.utils import _get_jpg_parameters, get_j2k_parameters
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from cxr_viewer.common.errors import ImageOpenError

#: Plugins that can abort the process: used only in the child process.
CRASHING_PLUGINS = frozenset({"gdcm"})
#: Seconds a child decode may take before it is killed (a hung decoder).
CHILD_TIMEOUT_S = 120.0

_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")
_GREY = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def photometric_problem(photometric: str, samples: int) -> str | None:
    """Why PhotometricInterpretation and SamplesPerPixel contradict each other, or None."""
    if photometric in _COLOUR and samples != 3:
        return f"PhotometricInterpretation {photometric} needs SamplesPerPixel 3, not {samples}"
    if photometric in _GREY and samples != 1:
        return f"PhotometricInterpretation {photometric} needs SamplesPerPixel 1, not {samples}"
    if photometric not in _COLOUR + _GREY:
        return f"unknown PhotometricInterpretation {photometric or '(missing)'}"
    return None


def j2k_siz(codestream: bytes) -> dict | None:
    """Rows, columns, components and precision from a JPEG 2000 SIZ segment (or a JP2 box)."""
    start = codestream.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ
    if start < 0:
        return None
    try:
        (xsiz, ysiz, xo, yo) = struct.unpack(">IIII", codestream[start + 8:start + 24])
        (csiz,) = struct.unpack(">H", codestream[start + 40:start + 42])
        ssiz = codestream[start + 42]
    except (struct.error, IndexError):
        return None
    return {"rows": ysiz - yo, "cols": xsiz - xo, "components": csiz,
            "precision": (ssiz & 0x7F) + 1, "signed": bool(ssiz & 0x80)}


def codestream_params(ts: UID, frame: bytes) -> dict | None:
    """What the encoded frame itself says (rows, cols, components, precision), or None if the
    transfer syntax has no parser here or the codestream cannot be parsed."""
    if ts in JPEG2000TransferSyntaxes or "HTJ2K" in ts.keyword or "High-Throughput" in ts.name:
        siz = j2k_siz(frame)
        if siz is not None:
            try:
                siz["signed"] = bool(get_j2k_parameters(frame).get("is_signed", siz["signed"]))
            except Exception:
                pass
        return siz
    if ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        info = _get_jpg_parameters(frame)
        if not info:
            return None
        return {"rows": info["height"], "cols": info["width"], "components": info["components"],
                "precision": info["precision"]}
    return None


def check_header(ds: Dataset, ts: UID) -> None:
    """Refuse a compressed dataset whose Image Pixel module contradicts itself."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    samples = _int(ds, "SamplesPerPixel", 1)
    problem = photometric_problem(photometric, samples)
    if problem:
        raise ImageOpenError(f"header contradicts itself: {problem}")
    bits_allocated, bits_stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
        raise ImageOpenError(
            f"header contradicts itself: BitsAllocated {bits_allocated} / BitsStored {bits_stored} "
            f"is not possible for {ts.name}"
        )
    if ts in JPEGTransferSyntaxes + JPEGLSTransferSyntaxes and bits_allocated > 16:
        raise ImageOpenError(f"header contradicts itself: BitsAllocated {bits_allocated} is not possible for {ts.name}")
    if _int(ds, "PixelRepresentation", 0) not in (0, 1):
        raise ImageOpenError(f"invalid PixelRepresentation {ds.get('PixelRepresentation')}")
    if samples == 3 and _int(ds, "PlanarConfiguration", 0) not in (0, 1):
        raise ImageOpenError(f"invalid PlanarConfiguration {ds.get('PlanarConfiguration')}")


def check_codestream(ds: Dataset, ts: UID, frame: bytes) -> dict | None:
    """Refuse a frame whose codestream contradicts the header (size, components, precision)."""
    params = codestream_params(ts, frame)
    if params is None:
        return None
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    samples = _int(ds, "SamplesPerPixel", 1)
    problems = []
    if (params["rows"], params["cols"]) != (rows, cols):
        problems.append(f"{params['cols']} x {params['rows']} px in the codestream, "
                        f"Columns {cols} x Rows {rows} in the header")
    if params["components"] != samples:
        problems.append(f"{params['components']} components in the codestream, SamplesPerPixel {samples}")
    if params["precision"] > _int(ds, "BitsAllocated"):
        problems.append(f"{params['precision']}-bit samples in the codestream, "
                        f"BitsAllocated {_int(ds, 'BitsAllocated')}")
    if problems:
        raise ImageOpenError(f"header contradicts the {ts.name} data: " + "; ".join(problems))
    return params


def _plugin_message(exc: BaseException) -> str:
    """The plugin's own reason out of pydicom's "Unable to decode ... plugins:" wrapper."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Unable to decode"):
        return lines[1][:300]
    return _first_line(exc)


def _encoded_frame(ds: Dataset, index: int, frames: int) -> bytes:
    try:
        return get_frame(ds.PixelData, index, number_of_frames=frames)
    except Exception as exc:
        raise ImageOpenError(f"cannot find frame {index} in the compressed pixel data: {_first_line(exc)}") from None


def _child_decode(path: str, ts: str, index: int | None, plugin: str) -> np.ndarray:
    """Runs in the child process: read and decode one frame with a plugin that may crash."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.dcmread(path, force=True)
    if not getattr(ds, "file_meta", None):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    return np.ascontiguousarray(pixel_array(ds, index=index, decoding_plugin=plugin))


def child_main() -> None:
    """The child's loop: one JSON request a line on stdin; a length-prefixed JSON header and the
    raw array bytes on stdout (no pickle either way)."""
    logging.disable(logging.CRITICAL)  # pydicom logs each plugin failure with its traceback
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            arr = _child_decode(req["path"], req["ts"], req["index"], req["plugin"])
            head = {"ok": True, "dtype": arr.dtype.str, "shape": list(arr.shape)}
            body = arr.tobytes()
        except BaseException as exc:  # reported to the parent as one line
            head, body = {"ok": False, "error": _plugin_message(exc)}, b""
        data = json.dumps(head).encode()
        out.write(struct.pack("<QQ", len(data), len(body)) + data)
        out.write(body)
        out.flush()


def child_command() -> list[str]:
    """How to start the decode child: this interpreter, or the frozen app with a flag its entry
    point must honour (``--cxr-decode-worker`` calls :func:`child_main`)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--cxr-decode-worker"]
    return [sys.executable, "-c", "from cxr_viewer.io.codecs import child_main; child_main()"]


class _ChildDecoder:
    """One warm child process (started on first use, ~0.5 s); replaced after a crash or timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, bufsize=0)
        return self._proc

    def _read(self, proc: subprocess.Popen, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = proc.stdout.read(left)  # type: ignore[union-attr]
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def decode(self, path: str, ts: UID, index: int | None, plugin: str) -> np.ndarray:
        with self._lock:
            try:
                proc = self._start()
            except OSError as exc:
                raise ImageOpenError(f"cannot start the {plugin} decoder process: {exc.strerror or exc}") from None
            timer = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
            timer.start()
            try:
                req = json.dumps({"path": os.path.abspath(path), "ts": str(ts), "index": index, "plugin": plugin})
                proc.stdin.write(req.encode() + b"\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                n_head, n_body = struct.unpack("<QQ", self._read(proc, 16))
                head = json.loads(self._read(proc, n_head))
                body = self._read(proc, n_body)
            except (EOFError, OSError, ValueError):
                timed_out = not timer.is_alive()
                proc.kill()
                proc.wait()
                self._proc = None
                if timed_out:
                    raise ImageOpenError(f"the {plugin} decoder did not finish within {CHILD_TIMEOUT_S:.0f} s") from None
                raise ImageOpenError(f"the {plugin} decoder crashed on this file ({ts.name})") from None
            finally:
                timer.cancel()
        if not head.get("ok"):
            raise ImageOpenError(f"cannot decode pixel data ({ts.name}): {head.get('error', 'unknown error')}")
        return np.frombuffer(body, dtype=np.dtype(head["dtype"])).reshape(head["shape"]).copy()

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None


class _NoPluginTracebacks(logging.Filter):
    """pydicom logs every failing plugin with ``LOGGER.exception`` (a full traceback in the GUI's
    log); the failure reaches the user as one ImageOpenError line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.pathname.replace("\\", "/").endswith("pixels/decoders/base.py"))


logging.getLogger("pydicom").addFilter(_NoPluginTracebacks())
CHILD = _ChildDecoder()
atexit.register(CHILD.close)


def decode_compressed(ds: Dataset, ts: UID, path: str, index: int | None, frames: int) -> np.ndarray:
    """Decode one frame of encapsulated pixel data, or raise ImageOpenError (never abort)."""
    check_header(ds, ts)
    check_codestream(ds, ts, _encoded_frame(ds, index or 0, frames))
    plugins = list(get_decoder(ts).available_plugins)
    in_process = [p for p in plugins if p not in CRASHING_PLUGINS]
    failures = []
    for plugin in in_process:
        try:
            return pixel_array(ds, index=index, decoding_plugin=plugin)
        except MemoryError:
            raise
        except Exception as exc:
            failures.append(_plugin_message(exc))
    crashing = [p for p in plugins if p in CRASHING_PLUGINS]
    if crashing and not in_process:
        return CHILD.decode(path, ts, index, crashing[0])
    detail = failures[0] if failures else "no decoder"
    raise ImageOpenError(f"cannot decode pixel data ({ts.name}): {detail}")
