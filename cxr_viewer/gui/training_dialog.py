"""Training dialog: pick a folder, see the scan, train with live plots, cancel/resume, use the model."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Generator

import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QFont, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.gui.screen import available_geometry, centre_on, fitted_size
from cxr_viewer.gui.workers import TaskRunner
from cxr_viewer.training.data import DataError, choose_validation, scan_dataset
from cxr_viewer.training.engine import (
    OPTIMIZERS,
    DoneEvent,
    EpochEvent,
    SavedEvent,
    ScanEvent,
    StepEvent,
    TrainConfig,
    train,
)
from cxr_viewer.training.recipes import FINE_TUNE_SCHEDULE, RECIPES, SCRATCH_SCHEDULE, SHIFT_ROBUST, recipe_of

PLOT_INTERVAL_MS = 250  # redraw at most 4 times a second


@dataclass(frozen=True)
class ScanPreview:
    summary: str  # includes the scan's notes
    validation: str
    train_n: int
    val_n: int
    skipped: tuple[str, ...]


def scan_task(folder: str, labels_csv: str | None, val_split: float, seed: int, split_by: str = "patient",
              cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, ScanPreview]:
    yield Progress("scanning", 0, 1, folder)
    scan = scan_dataset(folder, labels_csv or None)
    cancel.raise_if_cancelled()
    try:
        train_s, val_s, note = choose_validation(scan, val_split, seed, split_by)
    except DataError as exc:
        train_s, val_s, note = scan.splits.get("train", []), [], f"no validation split: {exc}"
    return ScanPreview(scan.summary(), note, len(train_s), len(val_s),
                       tuple(f"{e.path}: {e.reason}" for e in scan.skipped))


class TrainingDialog(QDialog):
    model_ready = Signal(str)  # path of the trained model, when the user chooses to use it

    def __init__(self, parent: QWidget | None = None, current_model: str | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Train a model - {RESEARCH_NOTICE}")
        available = available_geometry(parent)
        self.resize(fitted_size(available, QSize(1200, 820)))  # the plots' bottom stays on a 720 px screen
        centre_on(self, available)
        self.current_model = current_model
        self.runner = TaskRunner(self, "training")
        self.scan_runner = TaskRunner(self, "scan")
        self.eval_runner = TaskRunner(self, "test evaluation")
        self.finished_run: DoneEvent | None = None
        self._saved: str | None = None  # the model written by the run, once it is whole
        self._steps: list[tuple[float, float]] = []
        self._epochs: list[EpochEvent] = []
        self._dirty = False
        self._build()
        self._wire()
        self._timer = QTimer(self)
        self._timer.setInterval(PLOT_INTERVAL_MS)
        self._timer.timeout.connect(self._redraw)
        self.finished.connect(lambda _result: self.shutdown())

    # --- construction ------------------------------------------------------------------
    def _build(self) -> None:
        self.folder = QLineEdit(self)
        self.folder.setPlaceholderText("Kaggle-style folder: train/ val/ test/ with NORMAL/ PNEUMONIA/ ...")
        self.browse = QPushButton("Browse...", self)
        self.labels_csv = QLineEdit(self)
        self.labels_csv.setPlaceholderText("optional labels CSV for the lung-cancer association head")
        self.scan_button = QPushButton("Scan", self)
        self.scan_text = QPlainTextEdit(self)
        self.scan_text.setReadOnly(True)
        self.scan_text.setMaximumHeight(80)

        self.optimizer = QComboBox(self)
        self.optimizer.addItems(OPTIMIZERS)
        self.optimizer.setCurrentText("adamw")
        self.lr = QDoubleSpinBox(self)
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.epochs = QSpinBox(self)
        self.epochs.setRange(1, 500)
        self.epochs.setValue(10)
        self.batch = QSpinBox(self)
        self.batch.setRange(1, 1024)
        self.batch.setValue(30)
        self.activation = QComboBox(self)
        self.activation.addItems(["relu", "gelu", "tanh", "sigmoid"])
        self.input_size = QSpinBox(self)
        self.input_size.setRange(32, 1024)
        self.input_size.setSingleStep(32)
        self.input_size.setValue(224)
        self.val_split = QDoubleSpinBox(self)
        self.val_split.setRange(0.05, 0.45)
        self.val_split.setSingleStep(0.05)
        self.val_split.setValue(0.1)
        self.split_by = QComboBox(self)
        self.split_by.addItem("Patients at random", "patient")
        self.split_by.addItem("Earliest patients", "earliest")
        self.split_by.setToolTip("Earliest patients: the lowest-numbered patients of each class and id series "
                                 "(e.g. IM-0115, person12) are validated on: acquired apart from the training "
                                 "images, as a new hospital's are")
        self.balance = QCheckBox("Class-balanced sampling", self)
        self.balance.setChecked(True)
        self.augment = QCheckBox("Augmentation (its strength below; never flips)", self)
        self.augment.setChecked(True)
        self.precision = QComboBox(self)
        self.precision.addItems(["auto", "fp32", "bf16", "fp16"])
        self.device = QComboBox(self)
        self.device.addItems(["auto", "cpu", "cuda"])
        self.init = QComboBox(self)
        self.init.addItem("From scratch", "scratch")
        if self.current_model:
            self.init.addItem(f"Current model ({os.path.basename(self.current_model)})", self.current_model)
        self.init.addItem("Weights file...", "file")
        self.patience = QSpinBox(self)
        self.patience.setRange(0, 100)
        self.patience.setValue(5)
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.out = QLineEdit(os.path.join(os.path.expanduser("~"), "cxr_models", "model.safetensors"), self)
        if self.current_model:  # fine-tuning what the viewer uses is the usual start (and the quicker one)
            self.init.setCurrentIndex(1)
        self._build_recipe()

        form = QFormLayout()
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(self.browse)
        folder_row.addWidget(self.scan_button)
        form.addRow("Data folder", folder_row)
        form.addRow("Labels CSV", self.labels_csv)
        opts = QGridLayout()
        pairs = [("Optimizer", self.optimizer), ("Learning rate", self.lr), ("Epochs", self.epochs),
                 ("Batch size", self.batch), ("Head activation", self.activation), ("Input size", self.input_size),
                 ("Validation split", self.val_split), ("Early stopping (epochs)", self.patience),
                 ("Precision", self.precision), ("Device", self.device), ("Initial weights", self.init),
                 ("Seed", self.seed), ("Validation patients", self.split_by)]
        for i, (label, widget) in enumerate(pairs):
            opts.addWidget(QLabel(label, self), i // 3, (i % 3) * 2)
            opts.addWidget(widget, i // 3, (i % 3) * 2 + 1)
        row = (len(pairs) + 2) // 3
        opts.addWidget(self.balance, row, 0, 1, 3)
        opts.addWidget(self.augment, row, 3, 1, 3)
        form.addRow("Options", opts)
        recipe = QGridLayout()
        pairs = [("Recipe", self.recipe), ("Augmentation", self.augment_strength), ("Choose on", self.select_on),
                 ("Weight EMA", self.ema), ("Intensity", self.intensity), ("Lung guidance", self.lung_guidance),
                 ("Threshold", self.threshold_rule), ("Weight decay", self.weight_decay),
                 ("Aspect jitter", self.aspect_jitter)]
        for i, (label, widget) in enumerate(pairs):
            recipe.addWidget(QLabel(label, self), i // 4, (i % 4) * 2)
            recipe.addWidget(widget, i // 4, (i % 4) * 2 + 1)
        form.addRow("Robustness", recipe)
        form.addRow("Save model to", self.out)

        self.start = QPushButton("Start", self)
        self.resume = QPushButton("Resume", self)
        self.cancel = QPushButton("Cancel", self)
        self.use = QPushButton("Use this model", self)
        self.cancel.setEnabled(False)
        self.use.setEnabled(False)
        self.progress = QProgressBar(self)
        self.status = QLabel("", self)
        buttons = QHBoxLayout()
        for b in (self.start, self.resume, self.cancel, self.use):
            buttons.addWidget(b)
        buttons.addWidget(self.progress, 1)

        pg.setConfigOptions(antialias=False)
        self.step_plot = pg.PlotWidget(parent=self, title="Training loss per step")
        self.step_curve = self.step_plot.plot(pen=pg.mkPen("#4a90d9", width=1))
        self.loss_plot = pg.PlotWidget(parent=self, title="Loss per epoch")
        self.loss_plot.addLegend()
        self.train_curve = self.loss_plot.plot(pen=pg.mkPen("#4a90d9", width=2), symbol="o",
                                              symbolBrush="#4a90d9", name="train")
        self.val_curve = self.loss_plot.plot(pen=pg.mkPen("#e67e22", width=2), symbol="o",
                                            symbolBrush="#e67e22", name="validation")
        self.metric_plot = pg.PlotWidget(parent=self, title="Validation accuracy and AUROC")
        self.metric_plot.addLegend()
        self.metric_plot.setYRange(0.4, 1.0)
        self.acc_curve = self.metric_plot.plot(pen=pg.mkPen("#27ae60", width=2), symbol="o",
                                              symbolBrush="#27ae60", name="accuracy")
        self.auc_curve = self.metric_plot.plot(pen=pg.mkPen("#8e44ad", width=2), symbol="t",
                                              symbolBrush="#8e44ad", name="AUROC")
        for p in (self.step_plot, self.loss_plot, self.metric_plot):
            p.setLabel("bottom", "step" if p is self.step_plot else "epoch")
            p.showGrid(x=True, y=True, alpha=0.3)
        plots = QHBoxLayout()
        for p in (self.step_plot, self.loss_plot, self.metric_plot):
            plots.addWidget(p)

        self.report = QPlainTextEdit(self)
        self.report.setReadOnly(True)
        self.report.setFont(QFont("monospace"))
        self.report_image = QLabel(self)
        self.report_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea(self)
        scroll.setWidget(self.report_image)
        scroll.setWidgetResizable(True)
        self.tabs = QTabWidget(self)
        plots_widget = QWidget(self)
        plots_widget.setLayout(plots)
        self.tabs.addTab(plots_widget, "Live plots")
        report_widget = QWidget(self)
        rl = QHBoxLayout(report_widget)
        rl.addWidget(self.report, 1)
        rl.addWidget(scroll, 1)
        self.tabs.addTab(report_widget, "Report")

        notice = QLabel(f"<b>{RESEARCH_NOTICE}</b> Models are chosen on the validation split only.", self)
        notice.setStyleSheet("color: #b00000;")
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.scan_text)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(notice)

    def _build_recipe(self) -> None:
        """The recipe's fields (training.recipes): choosing a recipe sets them; changing one makes it custom."""
        self.recipe = QComboBox(self)
        for r in RECIPES.values():
            self.recipe.addItem(r.label, r.name)
            self.recipe.setItemData(self.recipe.count() - 1, r.description, Qt.ItemDataRole.ToolTipRole)
        self.recipe.addItem("Custom", None)
        self.augment_strength = QComboBox(self)
        self.augment_strength.addItem("Standard", "standard")
        self.augment_strength.addItem("Strong", "strong")
        self.augment_strength.setToolTip("Strong: also processing curves, blur, edge enhancement, noise, collimation "
                                         "and wider zoom, each followed by the pipeline's own normalisation")
        self.select_on = QComboBox(self)
        self.select_on.addItem("Validation split", "validation")
        self.select_on.addItem("Split + shifted copies", "shifted")
        self.select_on.setToolTip("What chooses the epoch, the calibration and the threshold: the validation split "
                                  "as it is, or pooled with copies of it changed in 14 ways, as other "
                                  "hospitals' images differ (exposure, processing curve, blur, sharpening, noise, "
                                  "JPEG, crop, collimation, rotation, the image's shape)")
        self.ema = QDoubleSpinBox(self)
        self.ema.setDecimals(4)
        self.ema.setRange(0.0, 0.9999)
        self.ema.setSingleStep(0.001)
        self.ema.setToolTip("Exponential moving average of the weights, evaluated and saved instead of them (0: off)")
        self.intensity = QComboBox(self)
        self.intensity.addItem("As the initial model", None)
        self.intensity.addItem("Percentile window", "percentile")
        self.intensity.addItem("Histogram equalisation", "equalize")
        self.intensity.setToolTip("Equalisation makes exposure, gamma and processing-curve changes give the same input")
        self.lung_guidance = QDoubleSpinBox(self)
        self.lung_guidance.setDecimals(1)
        self.lung_guidance.setRange(0.0, 100.0)
        self.lung_guidance.setToolTip("Weight of a loss on the share of the heatmap's source activation outside the "
                                      "lung fields the anatomy model outlines on each training image (0: off)")
        self.threshold_rule = QComboBox(self)
        self.threshold_rule.addItem("Youden", "youden")
        for target in ("0.95", "0.97"):
            self.threshold_rule.addItem(f"Sensitivity >= {target}", f"sensitivity:{target}")
        self.weight_decay = QDoubleSpinBox(self)
        self.weight_decay.setDecimals(5)
        self.weight_decay.setRange(0.0, 1.0)
        self.weight_decay.setSingleStep(0.01)
        self.aspect_jitter = QDoubleSpinBox(self)
        self.aspect_jitter.setDecimals(2)
        self.aspect_jitter.setRange(0.0, 0.7)
        self.aspect_jitter.setSingleStep(0.05)
        self.aspect_jitter.setToolTip("Half the training images cropped on one axis to an aspect ratio within "
                                      "exp(+-J) and resized back, so the chest's proportions vary as they do when "
                                      "images of other shapes are squashed to the square input (0: off)")
        #: each recipe field's widget (training.recipes): applied, read and watched through this one table
        self._recipe_widgets = {"augment": self.augment, "augment_strength": self.augment_strength,
                                "select_on": self.select_on, "ema": self.ema, "intensity": self.intensity,
                                "lung_guidance": self.lung_guidance, "threshold_rule": self.threshold_rule,
                                "optimizer": self.optimizer, "weight_decay": self.weight_decay,
                                "aspect_jitter": self.aspect_jitter}
        self.apply_recipe(SHIFT_ROBUST.name)
        self._init_shown = self.init.currentData()
        self._schedule(self._init_shown)

    def apply_recipe(self, name: str | None) -> None:
        """Set the recipe's fields into their widgets (None: leave them, the user's own mix)."""
        if name is None:
            self._sync_recipe()  # "Custom" picked by hand: the combo says what the fields make
            return
        for key, widget in self._recipe_widgets.items():
            value = RECIPES[name].fields[key]
            if isinstance(widget, QCheckBox):
                widget.setChecked(value)
            elif isinstance(widget, QDoubleSpinBox):
                widget.setValue(value)
            elif widget is self.optimizer:  # a combo of plain texts
                widget.setCurrentText(value)
            else:
                widget.setCurrentIndex(widget.findData(value))
        self._sync_recipe()

    def _recipe_values(self) -> dict:
        """The recipe fields as the widgets set them."""
        def value(w):
            if isinstance(w, QCheckBox):
                return w.isChecked()
            if isinstance(w, QDoubleSpinBox):
                return round(w.value(), w.decimals())
            return w.currentText() if w is self.optimizer else w.currentData()

        return {key: value(w) for key, w in self._recipe_widgets.items()}

    def _sync_recipe(self) -> None:
        """Show which recipe the fields now make (Custom when none)."""
        self.recipe.blockSignals(True)
        self.recipe.setCurrentIndex(self.recipe.findData(recipe_of(self.config())))
        self.recipe.blockSignals(False)

    def _schedule(self, init: str | None) -> None:
        """Fine-tuning a cxr_viewer model (the current one, or a file with its description beside
        it): the short fine-tuning schedule (v4's from v3); from scratch or from
        other weights (e.g. ImageNet's, whose heads are new): the scratch schedule."""
        from cxr_viewer.ai.model import sidecar_path

        is_model = bool(init) and init not in ("scratch", "file") and (
            init == self.current_model or os.path.exists(sidecar_path(init)))
        schedule = FINE_TUNE_SCHEDULE if is_model else SCRATCH_SCHEDULE
        if init != "file":
            self.lr.setValue(schedule["lr"])
            self.epochs.setValue(schedule["epochs"])
            self.batch.setValue(schedule["batch_size"])
            self.patience.setValue(schedule["early_stopping"])

    def _wire(self) -> None:
        self.recipe.activated.connect(lambda i: self.apply_recipe(self.recipe.itemData(i)))
        for w in self._recipe_widgets.values():
            (w.toggled if isinstance(w, QCheckBox) else w.valueChanged if isinstance(w, QDoubleSpinBox)
             else w.currentIndexChanged).connect(self._sync_recipe)
        self.browse.clicked.connect(self._browse)
        self.scan_button.clicked.connect(self.scan)
        self.start.clicked.connect(lambda: self.start_training(resume=False))
        self.resume.clicked.connect(lambda: self.start_training(resume=True))
        self.cancel.clicked.connect(self.runner.cancel)
        self.use.clicked.connect(self._use_model)
        self.runner.progress.connect(self._on_event)
        self.runner.finished.connect(self._on_done)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.scan_runner.finished.connect(self._on_scanned)
        self.eval_runner.finished.connect(self._on_test_evaluated)
        self.eval_runner.failed.connect(lambda m: self.report.appendPlainText(f"\nTest split: not evaluated: {m}"))
        self.scan_runner.failed.connect(lambda m: self.scan_text.setPlainText(f"Cannot use this folder: {m}"))
        self.init.activated.connect(self._on_init_chosen)

    # --- actions -----------------------------------------------------------------------
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Training data folder", self.folder.text())
        if folder:
            self.folder.setText(folder)
            self.scan()

    def _on_init_chosen(self, index: int) -> None:
        if self.init.itemData(index) == "file":
            path, _ = QFileDialog.getOpenFileName(self, "Initial weights", "", "Weights (*.safetensors *.pth *.pt)")
            if path:
                self.init.insertItem(index, os.path.basename(path), path)
                self.init.setCurrentIndex(index)
            else:
                self.init.setCurrentIndex(0)
        if self.init.currentData() != self._init_shown:  # a new start: its schedule (edits kept otherwise)
            self._init_shown = self.init.currentData()
            self._schedule(self._init_shown)

    def scan(self) -> None:
        folder = self.folder.text().strip()
        if not folder:
            self.scan_text.setPlainText("Choose a folder first.")
            return
        self.scan_text.setPlainText("Scanning...")
        self.scan_runner.submit(scan_task, folder, self.labels_csv.text().strip(), self.val_split.value(), self.seed.value(),
                               self.split_by.currentData())

    def _on_scanned(self, p: ScanPreview) -> None:
        lines = [p.summary, f"validation: {p.validation} -> {p.train_n} train / {p.val_n} validation images"]
        lines += [f"skipped: {s}" for s in p.skipped[:20]]
        self.scan_text.setPlainText("\n".join(lines))

    def config(self) -> TrainConfig:
        init = self.init.currentData() or "scratch"
        return TrainConfig(
            data_dir=self.folder.text().strip(), out=self.out.text().strip(),
            labels_csv=self.labels_csv.text().strip() or None,
            lr=self.lr.value(), epochs=self.epochs.value(), batch_size=self.batch.value(),
            head_activation=self.activation.currentText(), input_size=self.input_size.value(),
            balance=self.balance.isChecked(),
            precision=self.precision.currentText(), device=self.device.currentText(),
            init="scratch" if init == "file" else init, early_stopping=self.patience.value(),
            val_split=self.val_split.value(), split_by=self.split_by.currentData(), seed=self.seed.value(),
            num_workers=1, **self._recipe_values(),
        )

    def start_training(self, resume: bool = False, config: TrainConfig | None = None) -> None:
        cfg = config or self.config()
        if not cfg.data_dir:
            self.status.setText("Choose a data folder first.")
            return
        self.finished_run = None
        self._saved = None
        if not resume:
            self._steps, self._epochs = [], []
        self._dirty = True
        self.report.clear()
        self.report_image.clear()
        self.tabs.setCurrentIndex(0)
        self.start.setEnabled(False)
        self.resume.setEnabled(False)
        self.cancel.setEnabled(True)
        self.use.setEnabled(False)
        self.status.setText("Resuming from checkpoint..." if resume else "Preparing images...")
        self._t_start = time.monotonic()
        self._timer.start()
        self.runner.submit(train, cfg, resume)

    def _use_model(self) -> None:
        path = self.finished_run.model_path if self.finished_run is not None else self._saved
        if path:
            self.model_ready.emit(path)

    # --- events ------------------------------------------------------------------------
    def _on_event(self, ev: object) -> None:
        if isinstance(ev, Progress):
            if ev.total:
                self.progress.setRange(0, ev.total)
                self.progress.setValue(ev.done)
            self.status.setText(f"{ev.stage}: {ev.done}/{ev.total}")
        elif isinstance(ev, SavedEvent):
            self._saved = ev.model_path
        elif isinstance(ev, ScanEvent):
            self.scan_text.setPlainText(f"{ev.summary}\nvalidation: {ev.validation}\ntrain {ev.train_counts}, "
                                        f"validation {ev.val_counts}; heads trained: {', '.join(ev.trained_heads)}; "
                                        f"skipped {len(ev.skipped)}")
        elif isinstance(ev, StepEvent):
            x = ev.epoch + ev.step / ev.steps
            self._steps.append((x * ev.steps, ev.loss))
            self.progress.setRange(0, ev.steps)
            self.progress.setValue(ev.step)
            self._last_step = ev
            self._dirty = True
        elif isinstance(ev, EpochEvent):
            self._epochs = [e for e in self._epochs if e.epoch != ev.epoch] + [ev]
            auc = f"{ev.val_auroc:.4f}" if ev.val_auroc is not None else "n/a"
            self.status.setText(
                f"Epoch {ev.epoch + 1}/{ev.epochs}: val loss {ev.val_loss:.4f}, accuracy {ev.val_accuracy:.4f}, "
                f"AUROC {auc}; {ev.images_per_s:.1f} img/s; ETA {ev.eta_s / 60:.1f} min; best epoch "
                f"{ev.best_epoch + 1}; {ev.device}")
            self._dirty = True

    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if self._steps:
            xs, ys = zip(*self._steps)
            self.step_curve.setData(xs, ys)
            st = getattr(self, "_last_step", None)
            if st is not None and not self.status.text().startswith("Epoch"):
                self.status.setText(f"Epoch {st.epoch + 1}, step {st.step}/{st.steps}: loss {st.loss:.4f}, "
                                    f"{st.images_per_s:.1f} img/s")
        if self._epochs:
            ep = [e.epoch + 1 for e in self._epochs]
            self.train_curve.setData(ep, [e.train_loss for e in self._epochs])
            self.val_curve.setData(ep, [e.val_loss for e in self._epochs])
            self.acc_curve.setData(ep, [e.val_accuracy or 0.0 for e in self._epochs])
            self.auc_curve.setData(ep, [e.val_auroc or 0.0 for e in self._epochs])

    def _finish(self, text: str) -> None:
        self._redraw()
        self._timer.stop()
        self.start.setEnabled(True)
        self.resume.setEnabled(True)
        self.cancel.setEnabled(False)
        self.status.setText(text)

    def _on_done(self, done: DoneEvent) -> None:
        self.finished_run = done
        self._finish(f"Finished: best epoch {done.best_epoch + 1}" + (" (stopped early)" if done.stopped_early else "")
                     + f". Model saved to {done.model_path}")
        self.use.setEnabled(True)
        self.report.setPlainText(f"{RESEARCH_NOTICE}\nValidation split report\n\n{done.report_text}\n\n"
                                 f"Saved: {done.model_path}\n{done.report_path}")
        png = os.path.splitext(done.model_path)[0] + ".pneumonia.png"
        if not os.path.exists(png):
            png = next((os.path.splitext(done.model_path)[0] + f".{h}.png" for h in ("lung_cancer_association",)
                        if os.path.exists(os.path.splitext(done.model_path)[0] + f".{h}.png")), "")
        if png:
            self.report_image.setPixmap(QPixmap(png))
        self.tabs.setCurrentIndex(1)
        data_dir = self.folder.text().strip()
        if data_dir and os.path.isdir(os.path.join(data_dir, "test")):
            from cxr_viewer.training.evaluation import evaluate_test_split_task

            self.report.appendPlainText("\nTest split: evaluating the new model on test/ ...")
            self.eval_runner.submit(evaluate_test_split_task, done.model_path, data_dir, self.device.currentText())

    def _on_test_evaluated(self, result) -> None:
        """The data's own test/ split, beside the validation report (never used to choose anything)."""
        self.report.appendPlainText(f"\nTest split report ({result.split}; not used for any choice)\n\n"
                                    f"{result.text() or 'no head could be measured'}")
        if result.skipped:
            self.report.appendPlainText(f"{len(result.skipped)} test image(s) skipped: "
                                        + "; ".join(f"{os.path.basename(e.path)}: {e.reason}" for e in result.skipped[:5]))

    def _on_failed(self, message: str) -> None:
        self._finish(f"Training stopped: {message}")

    def _on_cancelled(self) -> None:
        if self._saved:  # cancelled while fitting the input check: the model is whole
            self._finish(f"Cancelled after the model was saved to {self._saved}; it has no feature-distance "
                         "input check (the image check alone decides which images it scores).")
            self.use.setEnabled(True)
            return
        self._finish("Cancelled. The last finished epoch's checkpoint is kept: Resume continues from it.")

    def shutdown(self) -> None:
        self._timer.stop()
        self.runner.shutdown(60000)
        self.scan_runner.shutdown()
        self.eval_runner.shutdown(60000)

    # Closing a dialog ends in done(), which emits finished: stop the workers there. (Overriding
    # closeEvent and calling QDialog.closeEvent from Python crashed PySide6 6.12 at teardown.)
