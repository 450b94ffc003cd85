"""pytest-qt: the training dialog on a tiny real subset: live plots, cancel, report, use the model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from training_data import tiny_kaggle_root  # noqa: E402

from cxr_viewer.gui.app import configure_pyqtgraph  # noqa: E402
from cxr_viewer.gui.main_window import MainWindow  # noqa: E402
from cxr_viewer.gui.settings import Settings  # noqa: E402
from cxr_viewer.gui.training_dialog import TrainingDialog  # noqa: E402
from cxr_viewer.training.engine import EpochEvent, StepEvent  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "out" / "screenshots"


@pytest.fixture
def dialog(qtbot, shared_data, tmp_path):
    configure_pyqtgraph()
    root = tiny_kaggle_root(shared_data, tmp_path / "data", per_class=10)
    dlg = TrainingDialog()
    qtbot.addWidget(dlg)
    dlg.folder.setText(str(root))
    dlg.out.setText(str(tmp_path / "models" / "m.safetensors"))
    dlg.show()
    qtbot.waitExposed(dlg)
    yield dlg
    dlg.shutdown()


def small(dlg: TrainingDialog, tmp_path: Path, **kw):
    cfg = dlg.config()
    cfg.input_size, cfg.batch_size, cfg.epochs, cfg.max_steps_per_epoch = 48, 4, 2, 3
    cfg.num_workers, cfg.precision, cfg.device, cfg.bootstrap, cfg.val_split = 0, "fp32", "cpu", 20, 0.25
    cfg.cache_dir, cfg.warmup_steps, cfg.min_val_per_class = str(tmp_path / "cache"), 1, 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def run_to_end(qtbot, start, done, *runners, timeout=300000):
    """Call start() and wait for the signal done; a runner's failed or cancelled signal ends the wait
    at once and fails the test with why (instead of waiting the whole timeout for done)."""
    outcome = []
    done.connect(lambda *_: outcome.append(None))
    for r in runners:
        r.failed.connect(outcome.append)
        r.cancelled.connect(lambda: outcome.append("cancelled"))
    start()
    qtbot.waitUntil(lambda: bool(outcome), timeout=timeout)
    assert outcome[0] is None, f"the run failed: {outcome[0]}"


def test_scan_shows_counts(qtbot, dialog):
    with qtbot.waitSignal(dialog.scan_runner.finished, timeout=30000):
        dialog.scan()
    text = dialog.scan_text.toPlainText()
    assert "NORMAL 10" in text and "PNEUMONIA 10" in text and "grouped by patient" in text
    assert dialog.config().split_by == "patient"
    from cxr_viewer.training.data import SPLITS_BY

    assert tuple(dialog.split_by.itemData(i) for i in range(dialog.split_by.count())) == SPLITS_BY

    dialog.split_by.setCurrentIndex(dialog.split_by.findData("earliest"))
    with qtbot.waitSignal(dialog.scan_runner.finished, timeout=30000):
        dialog.scan()
    assert "earliest 10% of patients" in dialog.scan_text.toPlainText()
    assert dialog.config().split_by == "earliest"
    dialog.grab().save(str(SCREENSHOTS / "training_dialog_earliest.png"))


def test_live_plots_report_and_use_model(qtbot, dialog, tmp_path):
    epochs = []
    dialog.runner.progress.connect(lambda ev: epochs.append(ev) if isinstance(ev, EpochEvent) else None)
    shot = []

    def screenshot_mid_training(ev):
        if isinstance(ev, EpochEvent) and ev.epoch == 0 and not shot:
            qtbot.wait(300)  # let the throttled redraw land
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shot.append(dialog.grab().save(str(SCREENSHOTS / "training_dialog_mid_run.png")))

    dialog.runner.progress.connect(screenshot_mid_training)
    run_to_end(qtbot, lambda: dialog.start_training(config=small(dialog, tmp_path)), dialog.runner.finished,
               dialog.runner)
    assert len(epochs) == 2 and shot == [True]
    xs, ys = dialog.step_curve.getData()
    assert len(xs) == 6
    ex, ey = dialog.val_curve.getData()
    assert list(ex) == [1, 2]
    assert len(dialog.auc_curve.getData()[0]) == 2
    report = dialog.report.toPlainText()
    assert "precision" in report and "AUROC" in report and "Research use only" in report
    assert dialog.report_image.pixmap() is not None and not dialog.report_image.pixmap().isNull()
    with qtbot.waitSignal(dialog.model_ready, timeout=5000) as b:
        dialog.use.click()
    assert b.args[0].endswith("m.safetensors") and Path(b.args[0]).exists()
    # the dialog's default recipe (the shipped model's) is what the model was trained with
    import json

    recorded = json.loads(Path(b.args[0]).with_suffix(".json").read_text())["training"]["config"]
    assert (recorded["lung_guidance"], recorded["select_on"], recorded["intensity"], recorded["aspect_jitter"]) \
        == (3.0, "shifted", "equalize", 0.25)


def test_the_data_s_test_split_is_evaluated_after_training(qtbot, shared_data, tmp_path):
    """A folder with test/: the new model is measured on it, beside the validation report."""
    configure_pyqtgraph()
    root = tiny_kaggle_root(shared_data, tmp_path / "data", per_class=10, with_test=True)
    dlg = TrainingDialog()
    qtbot.addWidget(dlg)
    dlg.folder.setText(str(root))
    dlg.out.setText(str(tmp_path / "models" / "m.safetensors"))
    try:
        run_to_end(qtbot, lambda: dlg.start_training(config=small(dlg, tmp_path, epochs=1)),
                   dlg.eval_runner.finished, dlg.runner, dlg.eval_runner)
        report = dlg.report.toPlainText()
        assert "Validation split report" in report and "Test split report (the test/ split" in report
        assert report.index("Test split report") > report.index("Validation split report")
    finally:
        dlg.shutdown()


def test_cancel_stops_and_keeps_checkpoint(qtbot, dialog, tmp_path):
    cfg = small(dialog, tmp_path, epochs=5)
    steps = []
    dialog.runner.progress.connect(lambda ev: steps.append(ev) if isinstance(ev, StepEvent) else None)
    dialog.start_training(config=cfg)
    qtbot.waitUntil(lambda: any(s.epoch == 1 for s in steps), timeout=300000)
    dialog.cancel.click()
    qtbot.waitUntil(lambda: dialog.start.isEnabled(), timeout=60000)
    assert "Cancelled" in dialog.status.text()
    assert Path(cfg.checkpoint_path).exists() and not Path(cfg.out).exists()
    assert max(s.epoch for s in steps) <= 2


def test_main_window_opens_the_dialog(qtbot, tmp_path):
    configure_pyqtgraph()
    win = MainWindow(Settings(str(tmp_path / "s.ini")), load_default_model=False)
    qtbot.addWidget(win)
    win.act_train.trigger()
    assert win.training_dialog.isVisible()
    win.training_dialog.close()
    win.shutdown()


def test_the_dialog_offers_the_shipped_recipe_by_default_and_says_when_it_is_changed(qtbot, tmp_path, monkeypatch):
    from cxr_viewer.training.recipes import BASIC, SHIFT_ROBUST, recipe_of

    current = str(REPO / "models" / "default.safetensors")
    dlg = TrainingDialog(current_model=current)
    qtbot.addWidget(dlg)
    cfg = dlg.config()
    assert dlg.recipe.currentData() == "shift-robust" and recipe_of(cfg) == "shift-robust"
    assert {k: getattr(cfg, k) for k in SHIFT_ROBUST.fields} == dict(SHIFT_ROBUST.fields)
    # fine-tuning the current model, with the schedule that made the shipped versions
    assert (cfg.init, cfg.lr, cfg.epochs, cfg.batch_size, cfg.early_stopping) == (current, 1e-4, 3, 32, 0)
    dlg.lung_guidance.setValue(1.0)  # one field changed by hand: no longer the shipped recipe
    assert dlg.recipe.currentText() == "Custom" and dlg.config().lung_guidance == 1.0
    dlg.augment.setChecked(False)  # no augmentation is no recipe either
    dlg.apply_recipe(None)  # "Custom" picked by hand: the combo still says what the fields make
    assert dlg.recipe.currentText() == "Custom"
    dlg.recipe.activated.emit(dlg.recipe.findData("basic"))  # as a user's pick arrives
    assert dlg.recipe.currentData() == "basic" and dlg.augment.isChecked()
    assert {k: getattr(dlg.config(), k) for k in BASIC.fields} == dict(BASIC.fields)
    dlg.init.setCurrentIndex(0)
    dlg._on_init_chosen(0)  # from scratch: the scratch schedule
    assert (dlg.config().lr, dlg.config().epochs, dlg.config().early_stopping) == (1e-3, 10, 5)
    dlg.epochs.setValue(7)
    dlg._on_init_chosen(0)  # the same start chosen again: the user's edit stays
    assert dlg.config().epochs == 7
    from PySide6.QtWidgets import QFileDialog

    other = tmp_path / "imagenet_resnet50.safetensors"  # weights without a cxr_viewer description
    other.write_bytes(b"")
    for path, expected in ((str(other), (1e-3, 10)), (current, (1e-4, 3))):
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, p=path: (p, ""))
        dlg.init.setCurrentIndex(dlg.init.findData("file"))
        dlg._on_init_chosen(dlg.init.currentIndex())
        assert dlg.config().init == path and (dlg.config().lr, dlg.config().epochs) == expected
    dlg.show()
    qtbot.waitExposed(dlg)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    dlg.apply_recipe("shift-robust")
    dlg.grab().save(str(SCREENSHOTS / "training_dialog_recipe.png"))
    dlg.shutdown()


def test_cancel_while_fitting_the_input_check_keeps_the_saved_model_usable(qtbot, dialog, tmp_path, monkeypatch):
    """The model is whole before its input check is fitted: a cancel then says so and Use stays offered."""
    from cxr_viewer.ai.gate import ood_path
    from cxr_viewer.training import engine
    from cxr_viewer.training.engine import SavedEvent

    monkeypatch.setattr(engine, "MIN_INPUT_CHECK_VALIDATION", 2)
    cfg = small(dialog, tmp_path, epochs=1, input_check_min_images=4)
    dialog.runner.progress.connect(lambda ev: dialog.runner.cancel() if isinstance(ev, SavedEvent) else None)
    dialog.start_training(config=cfg)
    qtbot.waitUntil(lambda: dialog.start.isEnabled(), timeout=300000)
    assert dialog.status.text().startswith("Cancelled after the model was saved to")
    assert dialog.use.isEnabled() and Path(cfg.out).exists() and not Path(ood_path(cfg.out)).exists()
    with qtbot.waitSignal(dialog.model_ready, timeout=5000) as b:
        dialog.use.click()
    assert b.args[0] == cfg.out
