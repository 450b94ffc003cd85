"""The ``cxr-viewer`` entry point: the GUI without a subcommand, else one module per command group."""

from __future__ import annotations

import argparse
import sys
import warnings

from cxr_viewer import RESEARCH_NOTICE, __version__
from cxr_viewer.cli import clinical, images, scoring, training


def _gui(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cxr-viewer",
        description=f"Chest X-ray viewer. {RESEARCH_NOTICE} Subcommands: info, render, predict, train, evaluate, "
                    "experiment, export, pacs (see 'cxr-viewer export -h').",
    )
    parser.add_argument("paths", nargs="*", help="DICOM/PNG/JPEG files, folders or DICOMDIRs to open")
    parser.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window once the first image is shown, then quit")
    parser.add_argument("--self-test", action="store_true",
                        help="check this installation: load the samples, score them with the default model, exit 0/1")
    parser.add_argument("--json", metavar="OUT", help="with --self-test: also write the report to OUT")
    parser.add_argument("--version", action="version", version=f"cxr-viewer {__version__}")
    args = parser.parse_args(argv)
    if args.self_test:
        from cxr_viewer.cli.selftest import main as self_test

        return self_test(args.json)
    from cxr_viewer.common.errors import UserError
    from cxr_viewer.gui.app import run_app

    try:
        return run_app(args.paths, screenshot=args.screenshot)
    except UserError as exc:  # no window can be opened here (no display, a missing library): one line
        print(f"cxr-viewer: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a reader that left early is noticed here, not at exit
        return code
    except BrokenPipeError:
        # the reader of stdout went away (``cxr-viewer info --json X | head -1``): stop quietly, the way
        # a shell tool does; stdout is pointed at devnull so that Python's exit flush cannot fail again
        # (https://docs.python.org/3/library/signal.html#note-on-sigpipe)
        import os

        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("info", "render", "predict", "train", "evaluate", "experiment", "export", "pacs",
                                       "train-input-check", "train-anatomy", "train-nodule"):
        return _gui(argv)
    parser = argparse.ArgumentParser(prog="cxr-viewer")
    sub = parser.add_subparsers(dest="command", required=True)
    for part in (images, scoring, training, clinical):
        part.add_parsers(sub)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        # Library warnings about damaged files (pydicom, Pillow) would break the one-line messages
        # on stderr; every file that cannot be opened is reported with its own reason instead.
        warnings.simplefilter("ignore")
        return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
