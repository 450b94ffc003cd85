"""Command line for clinical integration: ``cxr-viewer export`` and ``cxr-viewer pacs``.

Exit codes: 0 everything done; 1 partly done (some images failed, the rest written; some files
not sent); 2 bad input or usage (nothing written); 3 the PACS could not be reached or refused
(``pacs`` only); 130 interrupted. Messages are one line on stderr; passwords and patient names
never appear in them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from cxr_viewer import RESEARCH_NOTICE

EXIT_OK, EXIT_PARTIAL, EXIT_BAD_INPUT, EXIT_PACS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


PASSWORD_ENV = "CXR_VIEWER_PACS_PASSWORD"


def _err(command: str, message: str) -> None:
    print(f"cxr-viewer {command}: {message}", file=sys.stderr)


# --- export --------------------------------------------------------------------------------


def _out_path(target: str | None, image, kind: str, many: bool, deidentifier=None,
              used: set | None = None) -> str | None:
    from cxr_viewer.clinical.export import outbox_name, unique_path

    if not target:
        return None
    if many or target.endswith(os.sep) or os.path.isdir(target):
        os.makedirs(target, exist_ok=True)
        path = os.path.join(target, outbox_name(image, kind, deidentifier))
        return unique_path(path, used) if used is not None else path
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"the folder for {target} does not exist")
    return target


def _export(args: argparse.Namespace) -> int:
    from cxr_viewer.cli.common import load_scorer
    from cxr_viewer.clinical.export import ExportError, ExportRequest, export_dicom_task, report_page
    from cxr_viewer.common.errors import ImageOpenError
    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.io.image import load_image
    from cxr_viewer.io.index import index

    if not (args.sr or args.sc or args.pdf or args.image):
        _err("export", "nothing to export: give --sr, --sc, --pdf and/or --image")
        return EXIT_BAD_INPUT
    found = index(args.paths)
    refs = list(found.images())
    for e in found.errors:
        _err("export", f"{e.path}: {e.reason}")
    if not refs:
        _err("export", "no image could be opened")
        return EXIT_BAD_INPUT
    scorer = load_scorer("export", args.model, args.device)
    if scorer is None:
        return EXIT_BAD_INPUT
    deidentifier = None
    if args.deidentify:
        from cxr_viewer.clinical.deid import Deidentifier

        deidentifier = Deidentifier()  # one per run: images of one study keep one (new) Study UID
    many = len(refs) > 1
    pages, written, failed, used = [], [], len(found.errors), set()
    for ref in refs:
        try:
            image = load_image(ref, min(args.frame, ref.frames - 1))
            result = scorer.score(image, score_anyway=args.score_anyway)
            request = ExportRequest(*(_out_path(target, image, kind, many, deidentifier, used) for target, kind in
                                      ((args.sr, "sr"), (args.sc, "sc"), (args.image, "image"))), args.deidentify)
            page = report_page(image, result, scorer.meta, args.deidentify, deidentifier) if args.pdf else None
            if request.wants_dicom:  # all of this image's files, or none of them
                written += run_to_completion(export_dicom_task(image, result, request, deidentifier))
            if page is not None:
                pages.append(page)
        except (ExportError, ImageOpenError, OSError) as exc:
            failed += 1
            _err("export", f"{ref.path}: {exc}")
    if args.pdf and pages:
        try:
            written.append(_write_pdf(pages, args.pdf))
        except (OSError, ValueError) as exc:
            _err("export", f"{args.pdf}: {exc}")
            failed += 1
    for path in written:
        print(path)
    print(RESEARCH_NOTICE, file=sys.stderr)
    if not written:
        return EXIT_BAD_INPUT
    return EXIT_PARTIAL if failed else EXIT_OK


def _write_pdf(pages, path: str) -> str:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.gui.pdf_report import write_pdf_task

    _app = QGuiApplication.instance() or QGuiApplication(["cxr-viewer"])  # noqa: F841 (fonts need it)
    return run_to_completion(write_pdf_task(pages, path))


# --- pacs ----------------------------------------------------------------------------------


def _node_from_args(args: argparse.Namespace):
    from cxr_viewer.clinical.pacs import PacsNode
    from cxr_viewer.clinical.pacs_config import NodeStore

    if args.node:
        node = NodeStore().get(args.node)
        if args.timeout is not None:
            node = PacsNode.from_dict({**node.to_dict(), "timeout_s": args.timeout})
        return node
    timeout = 10.0 if args.timeout is None else args.timeout
    if args.url:
        return PacsNode.from_dict({"name": "command line", "kind": "dicomweb", "url": args.url,
                                   "username": args.user or "", "timeout_s": timeout})
    if args.host and args.aet:
        return PacsNode.from_dict({"name": "command line", "kind": "dimse", "host": args.host, "port": args.port,
                                   "called_ae": args.aet, "calling_ae": args.calling_aet,
                                   "retrieve_method": args.retrieve, "move_port": args.move_port,
                                   "timeout_s": timeout})
    raise ValueError("say which PACS: --node NAME (see 'cxr-viewer pacs nodes'), --aet AE --host HOST "
                     "[--port N], or --url URL")


def _password(node, args: argparse.Namespace) -> str | None:
    if node.kind != "dicomweb" or not node.username:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    from cxr_viewer.clinical.pacs import get_password

    return get_password(node)  # None where there is no keyring


def _pacs(args: argparse.Namespace) -> int:
    from cxr_viewer.clinical.pacs import PacsError
    from cxr_viewer.common.tasks import Cancelled

    if args.action == "nodes":
        return _pacs_nodes(args)
    if args.action == "cache":
        return _pacs_cache(args)
    try:
        node = _node_from_args(args)
    except (ValueError, KeyError) as exc:
        _err("pacs", str(exc).strip('"'))
        return EXIT_BAD_INPUT
    try:
        return args.run(args, node, _password(node, args))
    except PacsError as exc:
        _err(f"pacs {args.action}", str(exc))
        return EXIT_PACS
    except (KeyboardInterrupt, Cancelled):
        _err(f"pacs {args.action}", "interrupted")
        return EXIT_INTERRUPTED


def _pacs_nodes(args: argparse.Namespace) -> int:
    from cxr_viewer.clinical.pacs_config import NodeStore

    store = NodeStore()
    try:
        nodes = store.load()
    except ValueError as exc:
        _err("pacs nodes", str(exc))
        return EXIT_BAD_INPUT
    if args.json:
        json.dump([n.to_dict() for n in nodes], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for n in nodes:
            print(f"{n.name}\t{n.kind}\t{n.describe()}")
        if not nodes:
            print(f"no PACS nodes configured ({store.path}); add them in the viewer: File > PACS", file=sys.stderr)
    return EXIT_OK


def _pacs_cache(args: argparse.Namespace) -> int:
    from cxr_viewer.clinical.pacs_config import cache_dir, cache_usage, clear_cache

    folder = args.cache or cache_dir()
    files, size = cache_usage(folder)
    print(f"{folder}: {files} file(s), {size / 1e6:.1f} MB")
    if args.clear:
        print(f"deleted {clear_cache(folder)} file(s)")
    return EXIT_OK


def _parse_dates(text: str) -> tuple[str, str]:
    if not text:
        return "", ""
    a, _, b = text.partition("-")
    for d in (a, b):
        if d and not (len(d) == 8 and d.isdigit()):
            raise ValueError(f"dates are YYYYMMDD or YYYYMMDD-YYYYMMDD (either end may be empty), not {text!r}")
    return a, (b if _ else a)


def _pacs_echo(args, node, password) -> int:
    from cxr_viewer.clinical.pacs import echo

    seconds = echo(node, password)
    print(f"{node.describe()}: answered in {seconds * 1000:.0f} ms")
    return EXIT_OK


def _pacs_query(args, node, password) -> int:
    from dataclasses import asdict

    from cxr_viewer.cli.common import run_with_bar
    from cxr_viewer.clinical.pacs import QueryFilter, query_task

    try:
        date_from, date_to = _parse_dates(args.date or "")
    except ValueError as exc:
        _err("pacs query", str(exc))
        return EXIT_BAD_INPUT
    flt = QueryFilter(args.patient_id or "", args.patient_name or "", date_from, date_to, args.modality or "",
                      args.accession or "")
    matches = run_with_bar(query_task(node, flt, password))
    if args.json:
        json.dump([asdict(m) for m in matches], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for m in matches:
            print("\t".join(str(v) for v in (m.study_uid, m.patient_id, m.patient_name, m.study_date,
                                              m.modalities, m.accession, m.description)))
        print(f"{len(matches)} stud{'y' if len(matches) == 1 else 'ies'} found", file=sys.stderr)
    return EXIT_OK


def _pacs_retrieve(args, node, password) -> int:
    from cxr_viewer.cli.common import run_with_bar
    from cxr_viewer.clinical.pacs import PacsError, retrieve_task
    from cxr_viewer.clinical.pacs_config import cache_dir

    target = args.cache or cache_dir()
    got, failed = 0, 0
    for uid in args.study_uids:
        try:
            paths = run_with_bar(retrieve_task(node, uid, target, password))
        except PacsError as exc:
            _err("pacs retrieve", f"study {uid}: {exc}")
            for p in exc.paths:  # a partial retrieve keeps the complete files it got
                print(p)
            got += len(exc.paths)
            failed += 1
            continue
        for p in paths:
            print(p)
        got += len(paths)
        if not paths:
            _err("pacs retrieve", f"study {uid}: the PACS sent no images")
            failed += 1
    if failed:
        return EXIT_PARTIAL if got else EXIT_PACS
    return EXIT_OK


def _pacs_send(args, node, password) -> int:
    import pydicom

    from cxr_viewer.cli.common import run_with_bar
    from cxr_viewer.clinical.pacs import send_task

    missing = [p for p in args.files if not os.path.isfile(p)]
    if missing:
        _err("pacs send", f"not a file: {missing[0]}")
        return EXIT_BAD_INPUT
    dicom = []
    for p in args.files:
        try:  # files without the Part 10 preamble are DICOM too when they carry a SOP class
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True, specific_tags=["SOPClassUID"])
            if "SOPClassUID" not in ds:
                raise ValueError("no SOP Class UID")
            dicom.append(p)
        except Exception:  # noqa: BLE001 - any unreadable file is reported the same way
            _err("pacs send", f"{p}: not a DICOM file")
    if not dicom:
        return EXIT_BAD_INPUT
    result = run_with_bar(send_task(node, dicom, password))
    for p in result.sent:
        print(f"sent\t{p}")
    for p, reason in result.failed:
        _err("pacs send", f"{p}: {reason}")
    if not result.sent:
        return EXIT_PACS
    return EXIT_PARTIAL if result.failed or len(dicom) < len(args.files) else EXIT_OK


def add_parsers(sub) -> None:
    p_exp = sub.add_parser("export", help="score images and write a DICOM SR, Secondary Capture and/or PDF report")
    p_exp.add_argument("paths", nargs="+", help="DICOM/PNG/JPEG files or folders (recursive)")
    p_exp.add_argument("--sr", metavar="OUT.dcm", help="Comprehensive SR (TID 1500 style) with the scores")
    p_exp.add_argument("--sc", metavar="OUT.dcm", help="Secondary Capture with the heatmap and scores burnt in")
    p_exp.add_argument("--pdf", metavar="OUT.pdf", help="PDF report, one page per image")
    p_exp.add_argument("--image", metavar="OUT.dcm", help="a copy of the source DICOM (de-identified with --deidentify)")
    p_exp.add_argument("--deidentify", action="store_true",
                       help="remove or replace identifying attributes (DICOM PS3.15 basic profile) in every output; "
                            "dates are shifted back by one random whole-day offset per patient and run (option "
                            "'Retain Longitudinal Temporal Information with Modified Dates'), so studies of one "
                            "patient exported together keep their order and interval; times are kept")
    p_exp.add_argument("--frame", type=int, default=0, help="frame (0-based) of multi-frame images")
    p_exp.add_argument("--model", help="model .safetensors (default: models/default.safetensors)")
    p_exp.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p_exp.add_argument("--score-anyway", action="store_true",
                       help="also score images outside a head's intended use; every output marks those numbers")
    p_exp.set_defaults(func=_export)
    p_exp.epilog = "With several images, --sr/--sc/--image name folders. Exit: 0 done, 1 partly, 2 bad input."

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("which PACS")
    g.add_argument("--node", help="a node configured in the viewer (File > PACS) or listed by 'pacs nodes'")
    g.add_argument("--aet", help="DIMSE: the PACS's AE title")
    g.add_argument("--host", help="DIMSE: host name or address")
    g.add_argument("--port", type=int, default=104, help="DIMSE: port (default 104)")
    g.add_argument("--calling-aet", default="CXR_VIEWER", help="DIMSE: our AE title (default CXR_VIEWER)")
    g.add_argument("--retrieve", choices=("get", "move"), default="get", help="DIMSE: C-GET (default) or C-MOVE")
    g.add_argument("--move-port", type=int, default=0, help="DIMSE C-MOVE: port of our storage SCP")
    g.add_argument("--url", help="DICOMweb base URL (QIDO-RS/WADO-RS/STOW-RS)")
    g.add_argument("--user", help="DICOMweb user; the password comes from the OS keyring, "
                                  f"${PASSWORD_ENV} or --password-stdin (never from an argument)")
    g.add_argument("--password-stdin", action="store_true", help="read the DICOMweb password from stdin")
    g.add_argument("--timeout", type=float, help="seconds for each network step (default 10)")

    p_pacs = sub.add_parser("pacs", help="query, retrieve from and send to a PACS (DIMSE or DICOMweb)")
    p_pacs.set_defaults(func=_pacs)
    acts = p_pacs.add_subparsers(dest="action", required=True)
    p = acts.add_parser("nodes", help="list the configured PACS nodes")
    p.add_argument("--json", action="store_true")
    p = acts.add_parser("cache", help="how much is in the retrieve cache (patient data on this disk); --clear deletes it")
    p.add_argument("--cache", help="the cache folder (default: the viewer's PACS cache)")
    p.add_argument("--clear", action="store_true")
    p = acts.add_parser("echo", parents=[common], help="check that the PACS answers (C-ECHO / QIDO)")
    p.set_defaults(run=_pacs_echo)
    p = acts.add_parser("query", parents=[common], help="find studies (C-FIND / QIDO-RS)")
    p.add_argument("--patient-id")
    p.add_argument("--patient-name", help="wildcards * and ? allowed")
    p.add_argument("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    p.add_argument("--modality")
    p.add_argument("--accession")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_pacs_query)
    p = acts.add_parser("retrieve", parents=[common], help="fetch studies into the cache (C-GET/C-MOVE/WADO-RS)")
    p.add_argument("study_uids", nargs="+", metavar="STUDY_UID")
    p.add_argument("--cache", help="folder to store into (default: the viewer's PACS cache)")
    p.set_defaults(run=_pacs_retrieve)
    p = acts.add_parser("send", parents=[common], help="store DICOM files on the PACS (C-STORE / STOW-RS)")
    p.add_argument("files", nargs="+")
    p.set_defaults(run=_pacs_send)
