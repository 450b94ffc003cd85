"""``train``, ``evaluate`` and ``experiment``: the training part on the command line."""

from __future__ import annotations

import argparse
import os
import sys

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.cli.common import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK, load_scorer, run_with_bar
from cxr_viewer.training.recipes import RECIPES

#: the same as training.engine.OPTIMIZERS (kept here so that parsing arguments never imports torch)
OPTIMIZER_CHOICES = ("sgd", "adam", "adamw", "adamax", "adagrad")


def _train_config(args: argparse.Namespace):
    from cxr_viewer.training.engine import TrainConfig
    from cxr_viewer.training.recipes import apply_recipe

    cfg = TrainConfig(data_dir=args.data_dir, out=args.out)
    if getattr(args, "recipe", None):  # first: the options given one by one override it
        apply_recipe(cfg, args.recipe)
    for key in ("labels_csv", "optimizer", "lr", "weight_decay", "schedule", "epochs", "batch_size", "head_activation",
                "input_size", "precision", "device", "init", "early_stopping", "val_split", "split_by", "seed", "split_seed", "num_workers",
                "limit_per_class", "max_steps_per_epoch", "name", "version", "threshold_rule", "min_val_per_class",
                "augment_strength", "select_on", "ema", "mixup", "crop", "intensity", "lung_guidance", "aspect_jitter"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    cfg.balance = not args.no_balance
    cfg.input_check = not getattr(args, "no_input_check", False)
    cfg.augment = not args.no_augment
    if args.cache_dir is not None:
        cfg.cache_dir = args.cache_dir or None
    return cfg


def _reason(exc: BaseException) -> str:
    """One line for the user: a UserError's own message, an OSError's path and reason."""
    if isinstance(exc, OSError) and not str(exc).startswith("cannot"):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"cannot write or read {where}{exc.strerror or exc}"
    return " ".join(str(exc).split())


def _train_heads(args: argparse.Namespace) -> int:
    from cxr_viewer.common.errors import UserError
    from cxr_viewer.training.heads import HeadTrainConfig, train_heads

    if not args.init or args.init == "scratch":
        print("cxr-viewer train: --freeze-backbone needs --init MODEL.safetensors (the backbone to keep)", file=sys.stderr)
        return EXIT_BAD_INPUT
    cfg = HeadTrainConfig(data_dir=args.data_dir, base_model=args.init, out=args.out, labels_csv=args.labels_csv,
                          folds=args.cv, seed=args.seed or 0, device=args.device or "auto",
                          precision=args.precision or "auto", version=args.version)
    if args.cache_dir is not None:
        cfg.cache_dir = args.cache_dir or None
    try:
        done = run_with_bar(train_heads(cfg))
    except (UserError, OSError) as exc:  # bad data or base model (DataError), cannot write (OutputError)
        print(f"cxr-viewer train: {_reason(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(done.report_text)
    print(f"model: {done.model_path}\nreport: {done.report_path}", file=sys.stderr)
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    import csv

    if args.freeze_backbone:
        return _train_heads(args)

    from cxr_viewer.common.errors import UserError
    from cxr_viewer.common.fileio import atomic_path
    from cxr_viewer.common.tasks import Cancelled
    from cxr_viewer.training.engine import EpochEvent, OutputError, ScanEvent, StepEvent, _dist_info, train

    cfg = _train_config(args)
    main_rank = _dist_info()[1] == 0  # under torchrun only rank 0 logs and prints
    log_path = args.log or os.path.splitext(cfg.out)[0] + ".log.csv"
    rows: list[dict] = []
    if args.resume and os.path.exists(log_path):
        try:
            with open(log_path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            rows = []  # an unreadable log is started again; the checkpoint is what resumes
    cols = ["time", "event", "epoch", "step", "steps", "loss", "lr", "train_loss", "val_loss", "val_accuracy",
            "val_auroc", "val_sensitivity", "val_specificity", "images_per_s", "eta_s"]

    def write_log() -> None:
        if not main_rank:
            return
        try:
            with atomic_path(log_path) as tmp:
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                    w.writeheader()
                    w.writerows(rows)
        except OSError as exc:
            raise OutputError(f"cannot write the training log {log_path}: {exc.strerror or exc}") from None

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
            if len(ev.skipped) > 20:
                print(f"  ... and {len(ev.skipped) - 20} more skipped file(s)", file=sys.stderr)
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
        done = run_with_bar(train(cfg, resume=args.resume), on_event)
        write_log()
    except OutputError as exc:  # the disk filled up or went read-only during the run
        resume = ("; the checkpoint of the last finished epoch is kept: free space and resume with --resume"
                  if os.path.exists(cfg.checkpoint_path) else "")
        print(f"\ncxr-viewer train: {exc}{resume}", file=sys.stderr)
        return EXIT_FAIL
    except (UserError, OSError) as exc:  # bad data, options, --init file or output folder: before training
        print(f"cxr-viewer train: {_reason(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Cancelled):
        try:
            write_log()
        except OutputError:
            pass
        print(f"\ncxr-viewer train: stopped; resume with --resume (checkpoint {cfg.checkpoint_path})", file=sys.stderr)
        return EXIT_FAIL
    if not main_rank:
        return EXIT_OK
    print(done.report_text)
    print(f"model: {done.model_path}\nreport: {done.report_path}\nlog: {log_path}", file=sys.stderr)
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from cxr_viewer.common.errors import UserError
    from cxr_viewer.training.evaluation import evaluate_shifted_task, evaluate_task, select_samples

    if args.shifted and args.heatmap_in_lungs:
        print("cxr-viewer evaluate: --shifted and --heatmap-in-lungs are two measurements; run one at a time",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    scorer = load_scorer("evaluate", args.model, args.device, args.precision)
    if scorer is None:
        return EXIT_BAD_INPUT
    try:
        samples, note = select_samples(args.data_dir, args.split, scorer.meta.training, args.labels_csv)
        if args.shifted:
            return _print_shifted(scorer, run_with_bar(evaluate_shifted_task(scorer, samples, note)), args.json)
        if args.heatmap_in_lungs:
            return _print_lung_share(scorer, samples)
        result = run_with_bar(evaluate_task(scorer, samples, note, bootstrap=args.bootstrap,
                                            score_anyway=args.score_anyway))
    except FileNotFoundError as exc:
        print(f"cxr-viewer evaluate: not found: {exc.filename}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UserError, ValueError, OSError) as exc:
        print(f"cxr-viewer evaluate: {_reason(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(result.to_json(per_image=args.per_image))
    else:
        print(f"{RESEARCH_NOTICE}\nModel {scorer.meta.name} v{scorer.meta.version} ({scorer.meta.weights_sha256[:12]}) "
              f"on {note}\n")
        print(result.text())
    for e in result.skipped:
        print(f"skipped {e.path}: {e.reason}", file=sys.stderr)
    return EXIT_FAIL if result.skipped else EXIT_OK


def _print_lung_share(scorer, samples) -> int:
    import json

    from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path
    from cxr_viewer.training.evaluation import heatmap_lung_share_task

    anatomy = AnatomyModel.from_file(default_anatomy_path())
    doc = run_with_bar(heatmap_lung_share_task(scorer, anatomy, samples))
    doc["model"] = f"{scorer.meta.name} v{scorer.meta.version} ({scorer.meta.weights_sha256[:12]})"
    doc["anatomy_model"] = f"{anatomy.meta.name} v{anatomy.meta.version} ({anatomy.meta.weights_sha256[:12]})"
    print(json.dumps(doc, indent=2))
    return EXIT_OK


def _print_shifted(scorer, doc: dict, as_json: bool) -> int:
    import json

    from cxr_viewer.training.shift import format_shift_report

    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{RESEARCH_NOTICE}\nModel {scorer.meta.name} v{scorer.meta.version} ({scorer.meta.weights_sha256[:12]}) "
              f"on {doc['split']}: {doc['images']} images, {doc['shifted_images']} shifted copies\n")
        for h, r in doc["heads"].items():
            rows = {"as they are": r["validation"], **{f"shifted: {k}": v for k, v in r["shifted"].items()}}
            print(format_shift_report(rows, f"{h} at the model's threshold {r['threshold']:.3f}") + "\n")
    for e in doc["skipped"]:
        print(f"skipped {e['path']}: {e['reason']}", file=sys.stderr)
    return EXIT_FAIL if doc["skipped"] else EXIT_OK


def _experiment(args: argparse.Namespace) -> int:
    from cxr_viewer.common.errors import UserError
    from cxr_viewer.training.experiments import run_grid

    try:
        table_md, table_csv = run_grid(args, _train_config, run_with_bar)
    except (UserError, OSError) as exc:
        print(f"cxr-viewer experiment: {_reason(exc)}", file=sys.stderr)
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
    p.add_argument("--no-input-check", action="store_true",
                   help="do not fit the model's feature-distance input check after training (about 2 min on 2 cores)")
    p.add_argument("--recipe", choices=tuple(RECIPES),
                   help="shift-robust: as the shipped model was made (strong augmentation, aspect jitter 0.25, EMA, "
                        "equalised input, lung guidance, chosen on shifted copies, threshold at sensitivity 0.95); "
                        "basic: the first model's. The options below override it. The schedule is not part of a "
                        "recipe: v5 was trained from scratch (18 epochs, --lr 1e-3) and fine-tuned (12 epochs, "
                        "--lr 3e-4); the model card has the commands")
    p.add_argument("--augment-strength", choices=("standard", "strong"),
                   help="strong: also processing curves, blur, edge enhancement, noise, collimation, wider zoom "
                        "(default standard)")
    p.add_argument("--select-on", choices=("validation", "shifted"),
                   help="choose the epoch, calibration and threshold on the validation split (default) or on it "
                        "pooled with its shifted copies (images changed the way other hospitals' differ)")
    p.add_argument("--aspect-jitter", type=float, metavar="R",
                   help="crop half the training images on one axis to an aspect ratio within exp(+-R) and resize "
                        "back, so the chest's proportions vary as when images of other shapes are squashed to the "
                        "input (e.g. 0.25; default 0: off)")
    p.add_argument("--ema", type=float, help="exponential moving average of the weights, e.g. 0.995 (default 0: off)")
    p.add_argument("--mixup", type=float, help="mixup: blend each batch with a shuffled copy, Beta(A, A) (e.g. 0.4; default 0: off)")
    p.add_argument("--crop", choices=("none", "lungs"),
                   help="lungs: the model reads the box around both lungs found by the anatomy model, not the "
                        "whole image (default: as the --init model, else none)")
    p.add_argument("--intensity", choices=("percentile", "equalize"),
                   help="equalize: histogram equalisation after the percentile window, so that exposure, gamma and "
                        "processing curves change nothing (default: as the --init model, else percentile)")
    p.add_argument("--lung-guidance", type=float, metavar="W",
                   help="weight of a loss on the share of the last conv block's activation (where heatmaps come "
                        "from) outside the lung fields the anatomy model outlines on each training image (0: off)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--init", help="scratch (default), a cxr_viewer model .safetensors, or local ImageNet ResNet50 weights")
    p.add_argument("--early-stopping", type=int, help="patience in epochs on validation AUROC (0: off)")
    if grid:
        p.add_argument("--val-split", dest="val_splits", default="0.1,0.2", help="validation fractions, comma-separated")
    else:
        p.add_argument("--val-split", type=float, help="validation fraction carved from train (default 0.1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--split-by", choices=("patient", "earliest"),
                   help="how validation is carved from train: patient (grouped by patient at random, the default) or "
                        "earliest (the lowest-numbered patients of each class and id series: acquired apart from "
                        "the training images, as a new hospital's are)")
    p.add_argument("--split-seed", type=int,
                   help="seed of the validation split and its shifted copies (default: --seed); keep it and vary "
                        "--seed to train members of a seed ensemble on one split")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--cache-dir", help="decoded-and-resized image cache ('' to disable)")
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class (quick runs)")
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--threshold-rule", help="youden (default) or sensitivity:TARGET, e.g. sensitivity:0.97; "
                                           "with --resume of a finished run, re-finalises with the new rule")
    p.add_argument("--min-val-per-class", type=int,
                   help="fewest validation images per class to calibrate and choose a threshold (default 20); "
                        "below it the head is saved as not available")
    p.add_argument("--name", help="the model's name (default: the output file's name and the date)")
    p.add_argument("--version", help="the model's version (default: the date and time of the run)")


def _train_input_check(args: argparse.Namespace) -> int:
    """Train the image-based input check and, with --model, fit that model's feature distance."""
    import json

    from cxr_viewer.ai.gate import ood_path
    from cxr_viewer.training.intended_use import GateConfig, fit_feature_distance, load_folders, train_gate

    def epoch_line(event) -> None:  # the bar shows decoding; each finished epoch gets its own line
        if event.stage == "epoch":
            print(f"epoch {event.done}/{event.total}: {event.detail}", file=sys.stderr, flush=True)

    if args.feature_distance_only and not args.model:
        print("cxr-viewer train-input-check: --feature-distance-only needs --model", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.feature_distance_only and not args.out:
        print("cxr-viewer train-input-check: --out is needed (or --feature-distance-only with --model)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        data = run_with_bar(load_folders(args.children, args.adults, args.others))
    except ValueError as exc:
        print(f"cxr-viewer train-input-check: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path, reason in data.skipped:
        print(f"cxr-viewer train-input-check: skipped {path}: {reason}", file=sys.stderr)
    cfg = GateConfig(epochs=args.epochs, per_epoch=args.per_epoch, seed=args.seed, input_size=args.input_size,
                     width=args.width, hold_out_adults=tuple(filter(None, args.hold_out_adults.split(","))),
                     hold_out_others=tuple(filter(None, args.hold_out_others.split(","))))
    if not args.feature_distance_only:
        try:
            _gate, report = run_with_bar(train_gate(data, cfg, args.out), epoch_line)
        except ValueError as exc:
            print(f"cxr-viewer train-input-check: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(json.dumps(report, indent=2))
    if args.model:
        scorer = load_scorer("train-input-check", args.model, "cpu")
        if scorer is None:
            return EXIT_BAD_INPUT
        fd = run_with_bar(fit_feature_distance(scorer, data, cfg=cfg))
        fd.save(ood_path(args.model))
        print(json.dumps({"feature_distance": {"threshold": fd.threshold, **fd.fitted_on}}, indent=2))
    return EXIT_OK


def _write_report(out: str, report: dict) -> int:
    """The whole report as OUT.report.json (atomically); on stdout without the per-image rows."""
    import json

    from cxr_viewer.common.fileio import write_bytes_atomic

    write_bytes_atomic(os.path.splitext(out)[0] + ".report.json", json.dumps(report, indent=2).encode())
    print(json.dumps({k: v for k, v in report.items() if k != "per_image"}, indent=2))
    return EXIT_OK


def _train_anatomy(args: argparse.Namespace) -> int:
    """Cross-validate the anatomy model on JSRT + SCR masks, then train it on every image."""
    from cxr_viewer.training.anatomy import AnatomyConfig, train_anatomy

    def epoch_line(event) -> None:
        if event.stage != "reading" and event.done == event.total and event.total:
            print(f"{event.stage}: {event.detail}", file=sys.stderr, flush=True)

    cfg = AnatomyConfig(epochs=args.epochs, folds=args.folds, seed=args.seed)
    try:
        report = run_with_bar(train_anatomy(args.data, args.out, cfg, cross_validation=args.folds > 1), epoch_line)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"cxr-viewer train-anatomy: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _write_report(args.out, report)


def _train_nodule(args: argparse.Namespace) -> int:
    """Cross-validate the nodule/mass model on JSRT + NIH, then train it on every image."""
    from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path
    from cxr_viewer.ai.inference import cpu_supports_bf16
    from cxr_viewer.ai.model import ModelFileError
    from cxr_viewer.training.nodule import NoduleConfig, train_nodule

    def line(event) -> None:
        if event.detail and (event.done % 50 == 1 or event.done == event.total or "mined" in event.detail):
            print(f"{event.stage} {event.done}/{event.total}: {event.detail}", file=sys.stderr, flush=True)

    cfg = NoduleConfig(iterations=args.iterations, folds=args.folds, seed=args.seed, init=args.init or "",
                       bf16=cpu_supports_bf16())
    try:
        anatomy = AnatomyModel.from_file(args.anatomy or default_anatomy_path())
        anatomy.bf16 = cfg.bf16
        report = run_with_bar(train_nodule(args.jsrt, args.nih, args.out, cfg, anatomy, args.cache,
                                           cross_validation=args.folds > 1, final_anyway=args.final_anyway), line)
    except (FileNotFoundError, NotADirectoryError, PermissionError, ModelFileError, KeyError) as exc:
        print(f"cxr-viewer train-nodule: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _write_report(args.out, report)


def add_parsers(sub) -> None:
    p_anat = sub.add_parser("train-anatomy", help="train the lung and heart segmentation model (SCR masks of JSRT), "
                            "with patient-grouped cross-validation of Dice and the cardiothoracic ratio")
    p_anat.add_argument("--data", required=True, help="folder with images/ and masks/{right_lung,left_lung,heart}/")
    p_anat.add_argument("--out", required=True, help="output .safetensors (a .json description and .report.json beside it)")
    p_anat.add_argument("--epochs", type=int, default=50)
    p_anat.add_argument("--folds", type=int, default=5, help="cross-validation folds (1: no cross-validation)")
    p_anat.add_argument("--seed", type=int, default=0)
    p_anat.set_defaults(func=_train_anatomy)
    p_nod = sub.add_parser("train-nodule", help="train the nodule/mass model (lung-cancer association) on JSRT "
                           "nodule positions and NIH labels, with patient-grouped cross-validation")
    p_nod.add_argument("--jsrt", default="", help="JSRT folder (images/, masks/, jsrt_metadata.csv)")
    p_nod.add_argument("--nih", default="", help="NIH folder (images/, labels.csv with nodule_or_mass)")
    p_nod.add_argument("--out", required=True, help="output .safetensors (.json, .report.json and .cv.json beside it)")
    p_nod.add_argument("--init", help="a scoring model whose backbone the nodule model starts from")
    p_nod.add_argument("--anatomy", help="the anatomy model that finds the lung box (default: the bundled one)")
    p_nod.add_argument("--cache", default="", help="an .npz cache of the preprocessed lung boxes")
    p_nod.add_argument("--iterations", type=int, default=400, help="training iterations of 32 patches per model")
    p_nod.add_argument("--folds", type=int, default=5, help="cross-validation folds (1: none)")
    p_nod.add_argument("--seed", type=int, default=0)
    p_nod.add_argument("--final-anyway", action="store_true",
                       help="train the model on every image even when its cross-validation does not clear the bar "
                            "(it is then written as not available)")
    p_nod.set_defaults(func=_train_nodule)
    p_gate = sub.add_parser("train-input-check", help="train the image check of each head's intended use "
                            "(child / adult / not a radiograph / negative) and fit a model's feature distance")
    p_gate.add_argument("--children", nargs="+", required=True, help="folders of the paediatric training images")
    p_gate.add_argument("--adults", nargs="+", required=True, help="folders of adult chest radiographs")
    p_gate.add_argument("--others", nargs="*", default=[], help="folders of images that are not chest radiographs")
    p_gate.add_argument("--out", help="output .safetensors (a .json description beside it); needed unless "
                        "--feature-distance-only")
    p_gate.add_argument("--model", help="also fit this scoring model's feature distance (NAME.ood.safetensors)")
    p_gate.add_argument("--feature-distance-only", action="store_true",
                        help="keep the image check as it is; only fit --model's feature distance (after retraining a model)")
    p_gate.add_argument("--epochs", type=int, default=8)
    p_gate.add_argument("--per-epoch", type=int, default=2560)
    p_gate.add_argument("--seed", type=int, default=0)
    p_gate.add_argument("--input-size", type=int, default=128, help="the check's square input in px (default 128)")
    p_gate.add_argument("--width", type=int, default=32,
                        help="channels of the check's first stage (default 32: a quarter of a ResNet18's work; 64: a ResNet18)")
    p_gate.add_argument("--hold-out-adults", default="", help="adult folders left out of training, named by their last two parts (e.g. nih/images): a cross-source check")
    p_gate.add_argument("--hold-out-others", default="", help="other folders (last two parts) or generated kinds (text, noise, gradient, shapes, section, photo) left out")
    p_gate.set_defaults(func=_train_input_check)
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
    p_eval.add_argument("--score-anyway", action="store_true",
                        help="measure on every image, also those outside a head's intended use (set aside by default)")
    p_eval.add_argument("--shifted", action="store_true",
                        help="also measure the heads on every image changed the way other hospitals' images differ "
                             "(exposure, processing curve, sharpness, noise, JPEG, cropping, collimation, rotation)")
    p_eval.add_argument("--heatmap-in-lungs", action="store_true",
                        help="instead of metrics: the share of each positive image's heatmap inside the lung fields "
                             "outlined by the anatomy model (models/anatomy.safetensors)")
    p_eval.set_defaults(func=_evaluate)
    p_exp = sub.add_parser("experiment", help="the source paper's grid: optimizers x validation splits")
    _add_train_options(p_exp, grid=True)
    p_exp.add_argument("--optimizers", default="sgd,adam,adamax,adagrad")
    p_exp.add_argument("--out-dir", default="experiments")
    p_exp.set_defaults(func=_experiment)
