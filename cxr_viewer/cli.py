"""Command line: ``cxr-viewer [PATH...]`` opens the GUI; ``info``, ``render`` and ``predict`` are Qt-free."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import RESEARCH_NOTICE, __version__

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
#: the same as core.training.OPTIMIZERS (kept here so that parsing arguments never imports torch)
OPTIMIZER_CHOICES = ("sgd", "adam", "adamw", "adamax", "adagrad")


def _info(args: argparse.Namespace) -> int:
    from .core.index import index

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
    from .core.display import Window

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

    from .core.display import display_mapping, render_uint8
    from .core.errors import ImageOpenError
    from .core.fileio import atomic_path
    from .core.image import open_image

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


class _ProgressBar:
    """A plain progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self._last_decile = max(total, 1), label, 0, -1
        self.tty = sys.stderr.isatty()

    def step(self, n: int = 1) -> None:
        self.done += n
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        if self.tty:
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total}")
            if self.done >= self.total:
                sys.stderr.write("\n")
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            sys.stderr.write(f"{self.label} [{bar:<30}] {self.done}/{self.total}\n")
        sys.stderr.flush()


def _load_scorer(command: str, model: str | None, device: str, precision: str = "auto"):
    """The --model file (else the default model) on the device; None after a one-line message."""
    from .core.inference import Scorer
    from .core.model import ModelFileError
    from .core.model_store import default_model_path

    model_path = model or default_model_path()
    if not model_path:
        print(f"cxr-viewer {command}: no model: pass --model FILE.safetensors (none is installed in models/)",
              file=sys.stderr)
        return None
    try:
        return Scorer.from_file(model_path, device, precision)
    except (ModelFileError, ValueError) as exc:  # unreadable/refused file, or a device not available here
        print(f"cxr-viewer {command}: cannot use model {model_path}: {exc}", file=sys.stderr)
        return None


def _predict(args: argparse.Namespace) -> int:
    import csv

    from .core.index import index
    from .core.inference import score_many_task
    from .core.model import HEADS

    scorer = _load_scorer("predict", args.model, args.device)
    if scorer is None:
        return EXIT_BAD_INPUT
    model_path = scorer.path
    found = index(args.paths)
    refs = list(found.images())
    records: list[dict] = []
    for err in found.errors:
        records.append({"path": err.path, "error": err.reason})
    bar = _ProgressBar(len(refs), "scoring")
    heads = {h: scorer.meta.heads[h] for h in scorer.head_names}
    gen = score_many_task(scorer, refs, batch_size=args.batch_size)
    while True:
        try:
            row = next(gen)
        except StopIteration:
            break
        rec: dict = {"path": row.path}
        for h in HEADS:
            p = row.probabilities.get(h) if h in heads else None
            rec[f"{h}_probability"] = None if p is None else round(p, 6)
            rec[f"{h}_label"] = None if p is None else ("positive" if p >= heads[h].threshold else "negative")
        rec.update(model_sha256=scorer.meta.weights_sha256, device=scorer.choice.label)
        if row.error:
            rec["error"] = row.error
        records.append(rec)
        bar.step()
    failed = [r for r in records if r.get("error")]
    if args.csv:
        cols = ["path", *[f"{h}_{k}" for h in HEADS for k in ("probability", "label")], "model_sha256", "device", "error"]
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    else:
        doc = {"notice": RESEARCH_NOTICE, "model": {"path": model_path, "name": scorer.meta.name,
               "version": scorer.meta.version, "sha256": scorer.meta.weights_sha256,
               "trained_heads": scorer.trained}, "device": scorer.choice.label, "results": records}
        json.dump(doc, sys.stdout, indent=2 if args.json else None)
        sys.stdout.write("\n")
    for r in failed:
        print(f"cxr-viewer predict: {r['path']}: {r['error']}", file=sys.stderr)
    if not [r for r in records if not r.get("error")]:
        return EXIT_BAD_INPUT
    return EXIT_FAIL if failed else EXIT_OK


def _run_with_bar(gen, on_event=None):
    """Drive a core task generator from the command line with a progress bar on stderr."""
    from .core.tasks import Progress

    bars: dict[str, _ProgressBar] = {}
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress) and event.total:
            bar = bars.setdefault(event.stage, _ProgressBar(event.total, event.stage))
            bar.step(event.done - bar.done)
        if on_event is not None:
            on_event(event)


def _train_config(args: argparse.Namespace):
    from .core.training import TrainConfig

    cfg = TrainConfig(data_dir=args.data_dir, out=args.out)
    for key in ("labels_csv", "optimizer", "lr", "weight_decay", "schedule", "epochs", "batch_size", "head_activation",
                "input_size", "precision", "device", "init", "early_stopping", "val_split", "seed", "num_workers",
                "limit_per_class", "max_steps_per_epoch", "name", "version", "threshold_rule"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    cfg.balance = not args.no_balance
    cfg.augment = not args.no_augment
    if args.cache_dir is not None:
        cfg.cache_dir = args.cache_dir or None
    return cfg


def _train_heads(args: argparse.Namespace) -> int:
    from .core.data import DataError
    from .core.head_training import HeadTrainConfig, train_heads

    if not args.init or args.init == "scratch":
        print("cxr-viewer train: --freeze-backbone needs --init MODEL.safetensors (the backbone to keep)", file=sys.stderr)
        return EXIT_BAD_INPUT
    cfg = HeadTrainConfig(data_dir=args.data_dir, base_model=args.init, out=args.out, labels_csv=args.labels_csv,
                          folds=args.cv, seed=args.seed or 0, device=args.device or "auto",
                          precision=args.precision or "auto", version=args.version)
    if args.cache_dir is not None:
        cfg.cache_dir = args.cache_dir or None
    try:
        done = _run_with_bar(train_heads(cfg))
    except DataError as exc:
        print(f"cxr-viewer train: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(done.report_text)
    print(f"model: {done.model_path}\nreport: {done.report_path}", file=sys.stderr)
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    import csv

    if args.freeze_backbone:
        return _train_heads(args)

    from .core.data import DataError
    from .core.fileio import atomic_path
    from .core.tasks import Cancelled
    from .core.training import EpochEvent, ScanEvent, StepEvent, _dist_info, train

    cfg = _train_config(args)
    main_rank = _dist_info()[1] == 0  # under torchrun only rank 0 logs and prints
    log_path = args.log or os.path.splitext(cfg.out)[0] + ".log.csv"
    rows: list[dict] = []
    if args.resume and os.path.exists(log_path):
        with open(log_path, newline="") as f:
            rows = list(csv.DictReader(f))
    cols = ["time", "event", "epoch", "step", "steps", "loss", "lr", "train_loss", "val_loss", "val_accuracy",
            "val_auroc", "val_sensitivity", "val_specificity", "images_per_s", "eta_s"]

    def write_log() -> None:
        if not main_rank:
            return
        with atomic_path(log_path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

    state = {"last": 0.0}

    def on_event(ev) -> None:
        import time as _t

        if not main_rank:
            return
        now = _t.time()
        if isinstance(ev, ScanEvent):
            print(ev.summary, file=sys.stderr)
            print(f"validation: {ev.validation}; train {ev.train_counts}, val {ev.val_counts}; "
                  f"heads trained: {', '.join(ev.trained_heads)}; skipped {len(ev.skipped)}", file=sys.stderr)
            for e in ev.skipped[:20]:
                print(f"  skipped {e.path}: {e.reason}", file=sys.stderr)
        elif isinstance(ev, StepEvent):
            rows.append({"time": f"{now:.1f}", "event": "step", **{k: getattr(ev, k) for k in ("epoch", "step", "steps", "loss", "lr", "images_per_s")}})
            tty = sys.stderr.isatty()
            if now - state["last"] > (2 if tty else 60) or ev.step == ev.steps:
                state["last"] = now
                text = f"epoch {ev.epoch + 1} step {ev.step}/{ev.steps} loss {ev.loss:.4f} {ev.images_per_s:.1f} img/s"
                sys.stderr.write(f"\r{text}   " if tty else text + "\n")
                sys.stderr.flush()
        elif isinstance(ev, EpochEvent):
            rows.append({"time": f"{now:.1f}", "event": "epoch", **{k: getattr(ev, k) for k in cols if hasattr(ev, k)}})
            auc = f"{ev.val_auroc:.4f}" if ev.val_auroc is not None else "n/a"
            print(f"\nepoch {ev.epoch + 1}/{ev.epochs}: train loss {ev.train_loss:.4f}, val loss {ev.val_loss:.4f}, "
                  f"val acc {ev.val_accuracy:.4f}, AUROC {auc}, {ev.images_per_s:.1f} img/s, "
                  f"{ev.seconds:.0f} s, ETA {ev.eta_s / 60:.1f} min, best epoch {ev.best_epoch + 1} [{ev.device}]",
                  file=sys.stderr)
            write_log()

    try:
        done = _run_with_bar(train(cfg, resume=args.resume), on_event)
    except DataError as exc:
        print(f"cxr-viewer train: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Cancelled):
        write_log()
        print(f"\ncxr-viewer train: stopped; resume with --resume (checkpoint {cfg.checkpoint_path})", file=sys.stderr)
        return EXIT_FAIL
    write_log()
    if not main_rank:
        return EXIT_OK
    print(done.report_text)
    print(f"model: {done.model_path}\nreport: {done.report_path}\nlog: {log_path}", file=sys.stderr)
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .core.data import DataError
    from .core.evaluation import evaluate_task, select_samples

    scorer = _load_scorer("evaluate", args.model, args.device, args.precision)
    if scorer is None:
        return EXIT_BAD_INPUT
    try:
        samples, note = select_samples(args.data_dir, args.split, scorer.meta.training, args.labels_csv)
        result = _run_with_bar(evaluate_task(scorer, samples, note, bootstrap=args.bootstrap))
    except FileNotFoundError as exc:
        print(f"cxr-viewer evaluate: not found: {exc.filename}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (DataError, ValueError) as exc:
        print(f"cxr-viewer evaluate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(result.to_json(per_image=args.per_image))
    else:
        print(f"{RESEARCH_NOTICE}\nModel {scorer.meta.name} v{scorer.meta.version} ({scorer.meta.weights_sha256[:12]}) "
              f"on {note}\n")
        print(result.text())
    for e in result.skipped:
        print(f"skipped {e.path}: {e.reason}", file=sys.stderr)
    return EXIT_OK


def _experiment(args: argparse.Namespace) -> int:
    from .core.data import DataError
    from .core.experiments import run_grid

    try:
        table_md, table_csv = run_grid(args, _train_config, _run_with_bar)
    except DataError as exc:
        print(f"cxr-viewer experiment: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(table_md)
    print(f"CSV: {table_csv}", file=sys.stderr)
    return EXIT_OK


def _add_train_options(p: argparse.ArgumentParser, grid: bool = False) -> None:
    p.add_argument("data_dir", help="Kaggle-style root (train/ val/ test/ with class folders) or a split folder")
    p.add_argument("--labels-csv", help="labels CSV for the lung-cancer association head (e.g. JSRT's jsrt_metadata.csv)")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=("cosine", "constant"))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--head-activation", choices=("relu", "gelu", "tanh", "sigmoid"))
    p.add_argument("--input-size", type=int)
    p.add_argument("--no-balance", action="store_true", help="no class-balanced sampling")
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--init", help="scratch (default), a cxr_viewer model .safetensors, or local ImageNet ResNet50 weights")
    p.add_argument("--early-stopping", type=int, help="patience in epochs on validation AUROC (0: off)")
    if grid:
        p.add_argument("--val-split", dest="val_splits", default="0.1,0.2", help="validation fractions, comma-separated")
    else:
        p.add_argument("--val-split", type=float, help="validation fraction carved from train (default 0.1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--cache-dir", help="decoded-and-resized image cache ('' to disable)")
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class (quick runs)")
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--threshold-rule", help="youden (default) or sensitivity:TARGET, e.g. sensitivity:0.97; "
                                           "with --resume of a finished run, re-finalises with the new rule")
    p.add_argument("--name")
    p.add_argument("--version")


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
        from .core.selftest import main as self_test

        return self_test(args.json)
    from .gui.app import run_app

    return run_app(args.paths, screenshot=args.screenshot)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("info", "render", "predict", "train", "evaluate", "experiment", "export", "pacs"):
        return _gui(argv)
    parser = argparse.ArgumentParser(prog="cxr-viewer")
    sub = parser.add_subparsers(dest="command", required=True)
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
    p_pred = sub.add_parser("predict", help="score images with a model (research use only)")
    p_pred.add_argument("paths", nargs="+", help="files or folders (recursive)")
    p_pred.add_argument("--model", help="model .safetensors (default: models/default.safetensors)")
    p_pred.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p_pred.add_argument("--batch-size", type=int, default=8)
    fmt = p_pred.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="indented JSON on stdout (JSON is the default)")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    p_pred.set_defaults(func=_predict)
    p_train = sub.add_parser("train", help="train or fine-tune a model (checkpoint each epoch, --resume)")
    _add_train_options(p_train)
    p_train.add_argument("--out", required=True, help="output model .safetensors (a .json description is written beside it)")
    p_train.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    p_train.add_argument("--log", help="CSV log of the training events (default: beside --out)")
    p_train.add_argument("--freeze-backbone", action="store_true",
                         help="keep the --init model's backbone and other heads; fit only the heads this data labels, "
                              "estimated by patient-grouped cross-validation (--cv)")
    p_train.add_argument("--cv", type=int, default=5, help="folds for --freeze-backbone (default 5)")
    p_train.set_defaults(func=_train)
    p_eval = sub.add_parser("evaluate", help="evaluate a model on labelled images")
    p_eval.add_argument("data_dir")
    p_eval.add_argument("--model")
    p_eval.add_argument("--split", choices=("test", "validation"), default="test",
                        help="test: the test/ split (or the folder's class folders); validation: the model's own validation split")
    p_eval.add_argument("--labels-csv")
    p_eval.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p_eval.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p_eval.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUROC interval")
    p_eval.add_argument("--json", action="store_true")
    p_eval.add_argument("--per-image", action="store_true", help="include per-image scores in the JSON")
    p_eval.set_defaults(func=_evaluate)
    p_exp = sub.add_parser("experiment", help="the source paper's grid: optimizers x validation splits")
    _add_train_options(p_exp, grid=True)
    p_exp.add_argument("--optimizers", default="sgd,adam,adamax,adagrad")
    p_exp.add_argument("--out-dir", default="experiments")
    p_exp.set_defaults(func=_experiment)
    from .cli_clinical import add_parsers

    add_parsers(sub)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        # Library warnings about damaged files (pydicom, Pillow) would break the one-line messages
        # on stderr; every file that cannot be opened is reported with its own reason instead.
        warnings.simplefilter("ignore")
        return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
