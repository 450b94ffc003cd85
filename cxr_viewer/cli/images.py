"""``info`` and ``render``: the study tree and the image as the viewer shows it (never import Qt or torch)."""

from __future__ import annotations

import argparse
import json
import sys

from cxr_viewer import RESEARCH_NOTICE, __version__
from cxr_viewer.cli.common import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from cxr_viewer.io.index import index

    result = index(args.paths)
    if args.json:
        doc = {"version": __version__, "notice": RESEARCH_NOTICE, **result.to_dict()}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for p in result.patients:
            print(f"Patient {p.name or '-'} [{p.patient_id or '-'}]")
            for st in p.studies:
                print(f"  Study {st.date or '-'} {st.description or ''} ({st.uid})")
                for se in st.series:
                    print(f"    Series {se.modality} {se.description or ''}")
                    for im in se.images:
                        m = im.meta
                        print(f"      {im.path}  {m.cols}x{m.rows}" + (f" x{m.frames}" if m.frames > 1 else ""))
        for err in result.errors:
            print(f"ERROR {err.path}: {err.reason}", file=sys.stderr)
    return EXIT_OK if result.image_count else EXIT_BAD_INPUT


def _parse_window(text: str):
    from cxr_viewer.io.display import Window

    try:
        c, w = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--window takes CENTER,WIDTH, for example 15000,30000") from None
    if w <= 0:
        raise argparse.ArgumentTypeError("window width must be positive")
    return Window(c, w, "LINEAR", "command line")


def _render(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from cxr_viewer.common.errors import ImageOpenError
    from cxr_viewer.common.fileio import atomic_path
    from cxr_viewer.io.display import display_mapping, render_uint8
    from cxr_viewer.io.image import open_image

    try:
        image = open_image(args.path, args.frame)
    except ImageOpenError as exc:
        print(f"cxr-viewer render: {args.path}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    voi = args.window or image.default_voi()
    inverted = image.monochrome1 != args.invert
    out = render_uint8(display_mapping(image.values, voi, inverted))
    try:
        with atomic_path(args.output) as tmp:
            Image.fromarray(np.ascontiguousarray(out), mode="L").save(tmp, format="PNG")
    except OSError as exc:
        print(f"cxr-viewer render: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def add_parsers(sub) -> None:
    p_info = sub.add_parser("info", help="list the Patient/Study/Series/Image tree and per-file errors")
    p_info.add_argument("paths", nargs="+")
    p_info.add_argument("--json", action="store_true", help="JSON on stdout")
    p_info.set_defaults(func=_info)
    p_render = sub.add_parser("render", help="write the image as the viewer shows it by default (8-bit grey PNG)")
    p_render.add_argument("path")
    p_render.add_argument("-o", "--output", required=True, help="output PNG")
    p_render.add_argument("--frame", type=int, default=0, help="frame index (0-based) of a multi-frame image")
    p_render.add_argument("--window", type=_parse_window, metavar="CENTER,WIDTH", help="override the VOI window")
    p_render.add_argument("--invert", action="store_true", help="invert the display (on top of MONOCHROME1)")
    p_render.set_defaults(func=_render)
