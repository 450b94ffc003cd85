"""The main window: study browser, image view, side panel, status bar, menus and shortcuts."""

from __future__ import annotations

import os
from dataclasses import replace

from PySide6.QtCore import QRect, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence, QPainter
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QProgressBar,
    QScrollArea,
    QSizePolicy,
    QToolBar,
    QToolButton,
    QWidget,
)

from cxr_viewer import RESEARCH_NOTICE, __version__
from cxr_viewer.ai.anatomy import CtrMeasurement, default_anatomy_path
from cxr_viewer.ai.anatomy_tasks import AnatomyHolder, AnatomyModelSummary, AnatomyResult, segment_image_task
from cxr_viewer.ai.inference import ModelSummary, ScoreResult, WorklistRow, score_image_task
from cxr_viewer.ai.model_store import ModelHolder, default_model_path
from cxr_viewer.clinical.annotations import Annotation, AnnotationStore, label_text
from cxr_viewer.clinical.finding_marks import finding_marks
from cxr_viewer.common.tasks import Progress
from cxr_viewer.gui.browser import StudyBrowser
from cxr_viewer.gui.findings_panel import FindingsPanel, heatmap_lut
from cxr_viewer.gui.image_view import ImageView
from cxr_viewer.gui.measure_layer import TOOLS
from cxr_viewer.gui.screen import available_geometry, centre_on, fitted_size
from cxr_viewer.gui.settings import Settings
from cxr_viewer.gui.side_panel import SidePanel
from cxr_viewer.gui.view_grid import LAYOUTS, ViewGrid
from cxr_viewer.gui.workers import TaskRunner
from cxr_viewer.gui.worklist import Worklist
from cxr_viewer.io.display import Voi, Window
from cxr_viewer.io.hanging import compare_with_prior, study_of
from cxr_viewer.io.image import LoadedImage
from cxr_viewer.io.index import index_paths, merge_indexes
from cxr_viewer.io.study import ImageRef, OpenError, StudyIndex, iso_date
from cxr_viewer.io.thumbnails import Thumbnail, thumbnails_task

FILE_FILTER = "Images (*.dcm *.dicom *.DCM *.png *.jpg *.jpeg *.tif *.tiff *.bmp DICOMDIR);;All files (*)"
#: the docks' first widths, as shares of the window's width: the image gets the rest
LEFT_DOCK_SHARE, RIGHT_DOCK_SHARE = 0.19, 0.27

ABOUT_TEXT = (
    "<b>cxr_viewer {version}</b><br><br>"
    "A viewer for chest radiographs (DICOM, PNG, JPEG) with research AI models: a pneumonia score, "
    "lung and heart outlines with the cardiothoracic ratio, and input checks that refuse images outside "
    "each model's intended use.<br><br>"
    "<b>Intended use:</b> research and teaching. The scores are calibrated probabilities from models "
    "trained on public data sets; they are not a diagnosis and have not been cleared by any regulator.<br><br>"
    "<b style='color:#b00000'>{notice}</b>"
)


def _date_text(d: str) -> str:
    return iso_date(d) or "unknown date"


class ElidedLabel(QLabel):
    """A status-bar message that takes the room left and elides itself (full text as tooltip), so the
    pixel readout beside it is never pushed out or hidden."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(40)

    def setText(self, text: str) -> None:  # noqa: N802
        super().setText(text)
        self.setToolTip(text)

    def paintEvent(self, event):  # noqa: N802
        painter = QPainter(self)
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideMiddle, rect.width())
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)
        painter.end()


class MainWindow(QMainWindow):
    image_shown = Signal(object)  # LoadedImage, after it is on screen in the active viewport
    viewport_shown = Signal(int, object)  # viewport index, LoadedImage: any viewport
    index_loaded = Signal(object)  # StudyIndex

    model_changed = Signal(object)  # ModelSummary or None
    scored = Signal(object)  # ScoreResult shown in the findings panel
    exported = Signal(object)  # paths written (export) or a SendResult (send to PACS)
    anatomy_model_changed = Signal(object)  # AnatomyModelSummary, or None when loading it failed
    anatomy_shown = Signal(object)  # AnatomyResult drawn on the shown image

    def __init__(self, settings: Settings | None = None, parent: QWidget | None = None,
                 load_default_model: bool = True):
        super().__init__(parent)
        self.settings = settings or Settings()
        self.setWindowTitle(f"cxr_viewer {__version__} - {RESEARCH_NOTICE}")
        self.setAcceptDrops(True)

        self.grid = ViewGrid(self)  # 1x1, 1x2 or 2x2 viewports; ``view`` is the active one
        self.setCentralWidget(self.grid)
        self.browser = StudyBrowser(self)
        self.side = SidePanel(self)
        self.findings = FindingsPanel(self)
        self.worklist = Worklist(self)
        left = QDockWidget("Studies", self)
        left.setObjectName("studies_dock")
        left.setWidget(self.browser)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, left)
        self.studies_dock = left
        findings_dock = QDockWidget("AI findings", self)
        findings_dock.setObjectName("findings_dock")
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.findings)
        self.findings_scroll = scroll
        findings_dock.setWidget(scroll)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, findings_dock)
        self.findings_dock = findings_dock
        # display controls and metadata under the studies: the findings get the right side's full height
        right = QDockWidget("Image", self)
        right.setObjectName("image_dock")
        right.setWidget(self.side)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, right)
        self.image_dock = right
        self.worklist_dock = QDockWidget("Worklist", self)
        self.worklist_dock.setObjectName("worklist_dock")
        self.worklist_dock.setWidget(self.worklist)
        self.tabifyDockWidget(left, self.worklist_dock)
        left.raise_()
        # the worklist's tab shown: its list gets most of the left column's height (on a 1280x720
        # screen the usual share leaves one row)
        self.worklist_dock.visibilityChanged.connect(lambda shown: shown and QTimer.singleShot(0, self._size_worklist))
        self._heat_lut = heatmap_lut()
        self.models = ModelHolder()
        self.model_summary: ModelSummary | None = None
        self.last_score: ScoreResult | None = None
        #: per viewport, the last score and outlines of what it shows (emptied when a model is loaded):
        #: clicking back into a viewport shows them again instead of scoring and outlining anew
        self._view_scores: dict = {}
        self._view_anatomy: dict = {}
        self.anatomy_models = AnatomyHolder()
        self.anatomy_summary: AnatomyModelSummary | None = None
        self.anatomy_result: AnatomyResult | None = None  # of the shown image, while Anatomy is on
        self.anatomy_error = ""  # why the last load of the anatomy model failed

        self.index_runner = TaskRunner(self, "index")
        #: one image loader per viewport: loading a prior never cancels the current image
        self.image_runners = [TaskRunner(self, "image" if i == 0 else f"image {i + 1}") for i in range(len(self.grid.views))]
        self.image_runner = self.image_runners[0]
        self.thumb_runner = TaskRunner(self, "thumbnails")
        self.model_runner = TaskRunner(self, "model")
        self.score_runner = TaskRunner(self, "score")
        self.worklist_runner = TaskRunner(self, "worklist")
        self.export_runner = TaskRunner(self, "export")
        self.anatomy_model_runner = TaskRunner(self, "anatomy model")
        self.anatomy_runner = TaskRunner(self, "anatomy")
        #: Fetch Priors: query and retrieve (two threads: a cancelled one may be stuck in a network read)
        self.priors_runner = TaskRunner(self, "priors", threads=2)
        self.runners = (self.index_runner, *self.image_runners, self.thumb_runner, self.model_runner,
                        self.score_runner, self.worklist_runner, self.export_runner, self.anatomy_model_runner,
                        self.anatomy_runner, self.priors_runner)
        self._viewport_notes: dict[int, str] = {}  # what to say once a viewport's image is shown
        self._after_index = None  # what to do once the next index is shown, instead of showing its first image
        self.pacs_dialog = None
        self._passwords = None
        self.study_index = StudyIndex()
        self.current_ref: ImageRef | None = None
        #: the session's annotations, by (path, frame); a GSPS beside a DICOM is read once per image
        self.annotation_store = AnnotationStore()
        self._gsps_looked: set[tuple[str, int]] = set()
        self._gsps_folders: dict[str, dict[str, list[str]]] = {}  # folder -> {SOP Instance UID: GSPS paths}

        self._build_status_bar()
        self._build_actions()
        self._wire()
        self.fit_to_screen()
        for view in self.grid.views:
            view.set_left_mode(self.settings.left_mouse_mode())
        if load_default_model:
            path = self.settings.model_path() or default_model_path()
            if path:
                self.load_model(path)
            self.load_anatomy_model()
        self._show_message("Open a DICOM or PNG/JPEG study: File > Open (Ctrl+O), Open Folder (Ctrl+Shift+O), or drop files here.")

    @property
    def view(self) -> ImageView:
        """The active viewport: what the studies list, findings panel and tools act on."""
        return self.grid.active_view

    # --- construction ------------------------------------------------------------------
    def fit_to_screen(self, available: QRect | None = None) -> None:
        """Size the window to a share of the screen's available area (1280x720 included) and give
        the image most of the width."""
        available = available if available is not None else available_geometry(self)
        self.resize(fitted_size(available))
        centre_on(self, available)
        self._size_docks()

    def _size_docks(self) -> None:
        """The docks' shares of the window (again once shown: before, Qt lays them out by their hints)."""
        w, h = self.width(), self.height()
        self.resizeDocks([self.image_dock, self.findings_dock],
                         [int(w * LEFT_DOCK_SHARE), int(w * RIGHT_DOCK_SHARE)], Qt.Orientation.Horizontal)
        self.resizeDocks([self.studies_dock, self.image_dock], [int(h * 0.35), int(h * 0.65)], Qt.Orientation.Vertical)

    def _size_worklist(self) -> None:
        if self.worklist_dock.isVisible() and not self.worklist_dock.isFloating():
            h = self.height()
            self.resizeDocks([self.worklist_dock, self.image_dock], [int(h * 0.6), int(h * 0.4)], Qt.Orientation.Vertical)

    def showEvent(self, event):  # noqa: N802
        super().showEvent(event)
        if not getattr(self, "_docks_sized", False):
            self._docks_sized = True
            QTimer.singleShot(0, self._size_docks)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.message_label = ElidedLabel(self)  # file name and messages; never covers the readout
        self.position_label = QLabel("", self)
        self.value_label = QLabel("", self)
        self.units_label = QLabel("", self)
        self.device_label = QLabel("No model", self)
        self.progress = QProgressBar(self)
        self.progress.setMaximumWidth(160)
        self.progress.setVisible(False)
        self.notice_label = QLabel(f"<b>{RESEARCH_NOTICE}</b>", self)
        self.notice_label.setStyleSheet("color: #b00000; padding: 0 6px;")
        bar.addWidget(self.message_label, 1)
        for w in (self.position_label, self.value_label, self.units_label):
            bar.addWidget(w)
        self.cancel_button = QToolButton(self)
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Stop fetching the priors from the PACS (Esc)")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.priors_runner.cancel)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_button)
        bar.addPermanentWidget(self.device_label)
        bar.addPermanentWidget(self.notice_label)

    def _action(self, text: str, slot, shortcut=None, tip: str = "", checkable: bool = False) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setStatusTip(tip or text)
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        a = self._action
        self.act_open = a("&Open Files...", self.open_files_dialog, QKeySequence.StandardKey.Open)
        self.act_open_folder = a("Open &Folder...", self.open_folder_dialog, "Ctrl+Shift+O")
        self.act_quit = a("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_add_mode = a("Open &Adds to the List", self.settings.set_add_to_list, None,
                              "On: Open adds the files to the studies listed; off: they replace the list "
                              "(and the worklist)", checkable=True)
        self.act_add_mode.setChecked(self.settings.add_to_list())
        self.act_pacs = a("&PACS...", self.open_pacs_dialog, "Ctrl+Shift+P",
                          "Find studies on a PACS (DIMSE or DICOMweb), retrieve and open them")
        self.act_export = a("&Export Results...", self.export_dialog, "Ctrl+E",
                            "Write a DICOM SR, Secondary Capture and/or PDF report of the shown image's scores")
        self.act_send = a("Send Results to PACS...", self.send_results_dialog, None,
                          "Store the SR and Secondary Capture of the shown image on a PACS")
        self.act_fit = a("Zoom to &Fit", lambda: self.view.zoom_fit(), "F")
        self.act_1to1 = a("Zoom &1:1", lambda: self.view.zoom_1to1(), "1",
                          "One image pixel per screen pixel")
        self.act_2to1 = a("Zoom &2:1", lambda: self.view.zoom_to(2.0), "Ctrl+2",
                          "Two screen pixels per image pixel")
        self.act_flip_h = a("Flip &Horizontal", lambda: self.view.flip_horizontal(), "H",
                            "Mirror the picture left-right (display only: the file is unchanged)")
        self.act_flip_v = a("Flip &Vertical", lambda: self.view.flip_vertical(), "V",
                            "Mirror the picture top-bottom (display only)")
        self.act_rotate_left = a("Rotate 90° &Left", lambda: self.view.rotate_left(), "[",
                                 "Turn the picture a quarter anticlockwise (display only)")
        self.act_rotate_right = a("Rotate 90° Ri&ght", lambda: self.view.rotate_right(), "]",
                                  "Turn the picture a quarter clockwise (display only)")
        self.act_reset_orientation = a("Reset Flip/Rotation", lambda: self.view.reset_orientation(), None,
                                       "Show the picture as stored")
        self.act_loupe = a("&Magnifier", self.set_loupe, "M",
                           "A loupe following the mouse, three times the view's magnification", checkable=True)
        self.act_tags = a("DICOM &Tags...", self.show_tags, "Ctrl+D",
                          "Every tag of the shown image's file as a tree, with a search box")
        self.layout_actions: dict[str, QAction] = {}
        layout_group = QActionGroup(self)
        for name in LAYOUTS:
            act = a(f"Layout {name.replace('x', ' x ')}", lambda _=False, n=name: self.set_layout(n), None,
                    f"{name.replace('x', ' by ')} viewports", checkable=True)
            act.setIconText(name)
            layout_group.addAction(act)
            self.layout_actions[name] = act
        self.layout_actions["1x1"].setChecked(True)
        self.act_link = a("&Link Views", self.set_linked, None,
                          "Zoom, pan and window/level of one viewport move the others", checkable=True)
        self.act_link.setChecked(True)
        self.act_link.setIconText("Link")
        self.act_compare = a("&Compare with Prior", self.compare_with_prior, "C",
                             "Current PA left, the most recent earlier study of the same PatientID right")
        self.act_compare.setIconText("Compare")
        self.act_fetch_priors = a("&Fetch Priors from PACS", self.fetch_priors, None,
                                  "Query the PACS for this patient's earlier studies (same PatientID), retrieve the "
                                  "most recent one and compare with it")
        self.act_zoom_in = a("Zoom In", lambda: self.view.zoom_by(1.25), "+")
        self.act_zoom_out = a("Zoom Out", lambda: self.view.zoom_by(0.8), "-")
        self.act_reset = a("&Reset View", self.reset_view, "R", "Default window, no invert, no flip or rotation, fit")
        self.act_invert = a("&Invert", self._on_invert_action, "I", checkable=True)
        self.act_auto = a("&Auto Window", self.auto_window, "A", "Window to the 0.5-99.5 percentiles")
        self.act_anatomy = a("A&natomy", self.set_anatomy_visible, "Shift+A",
                             "Outline the lungs and heart and measure the cardiothoracic ratio (anatomy model)",
                             checkable=True)
        self.act_reset_ctr = a("Reset &CTR", self.reset_ctr, None, "Put the CTR lines back where the model drew them")
        self.act_overlay = a("Image &Overlay Text", self.set_overlay_visible, "O",
                             "Patient, study, window/zoom and orientation text in the image corners, and a scale bar",
                             checkable=True)
        self.act_overlay.setChecked(True)
        self.act_overlay.setIconText("Overlay")
        self.act_marks = a("AI &Finding Marks", self.set_finding_marks_visible, "Shift+F",
                           "The box around a finding the AI scored above its threshold and can place "
                           "(nodule/mass), with its label", checkable=True)
        self.act_marks.setChecked(True)
        self.act_marks.setIconText("Marks")
        self.act_reset_ctr.setEnabled(False)
        self.act_next = a("Next Image", lambda: self.browser.step(1), "PgDown")
        self.act_prev = a("Previous Image", lambda: self.browser.step(-1), "PgUp")
        self.act_next_frame = a("Next Frame", lambda: self.step_frame(1), "Right")
        self.act_prev_frame = a("Previous Frame", lambda: self.step_frame(-1), "Left")
        self.act_cancel = a("Cancel Loading", self.cancel_loading, "Esc")
        self.act_mode_window = a("Left Drag: Window/Level", lambda: self._set_left_mode("window"), "W", checkable=True)
        self.act_mode_pan = a("Left Drag: Pan", lambda: self._set_left_mode("pan"), "P", checkable=True)
        self.tool_actions: dict[str, QAction] = {}
        for kind, (text, key, tip) in TOOLS.items():
            act = a(text, lambda _=False, k=kind: self._set_left_mode(k), key, tip, checkable=True)
            act.setToolTip(f"{text} ({key}): {tip}")
            self.tool_actions[kind] = act
        group = QActionGroup(self)
        for act in (self.act_mode_window, self.act_mode_pan, *self.tool_actions.values()):
            group.addAction(act)
        self.left_mode_group = group
        self.act_delete_annotation = a("&Delete Annotation", self.delete_selected_annotation,
                                       QKeySequence.StandardKey.Delete, "Remove the selected annotation")
        self.act_undo_annotation = a("&Undo Annotation Change", self.undo_annotation, QKeySequence.StandardKey.Undo,
                                     "Undo the last annotation added, moved or deleted on this image")
        self.act_save_gsps = a("&Save Annotations (GSPS)", self.save_annotations, QKeySequence.StandardKey.Save,
                               "Save this image's annotations and window as a DICOM presentation state beside it")
        self.act_save_gsps_as = a("Save Annotations (GSPS) &As...", self.save_annotations_as, None,
                                  "Save this image's annotations as a DICOM presentation state where you choose")
        self.act_load_gsps = a("&Load Annotations (GSPS)...", self.load_annotations_dialog, None,
                               "Read the annotations of the shown image from a DICOM presentation state")
        (self.act_mode_pan if self.settings.left_mouse_mode() == "pan" else self.act_mode_window).setChecked(True)
        self.act_load_model = a("&Load Model...", self.load_model_dialog, "Ctrl+M")
        self.act_default_model = a("Use &Default Model", self.use_default_model)
        self.act_train = a("&Train a Model...", self.open_training_dialog, "Ctrl+T")
        self.act_score_all = a("&Score All Opened Images", self.score_all, "Ctrl+Shift+S")
        self.device_actions = {}
        device_group = QActionGroup(self)
        for dev, text in (("auto", "Device: Auto (CUDA if present)"), ("cpu", "Device: CPU"), ("cuda", "Device: CUDA")):
            act = a(text, lambda _=False, d=dev: self.set_device(d), checkable=True)
            device_group.addAction(act)
            self.device_actions[dev] = act
        self.device_actions[self.settings.device()].setChecked(True)
        self.preset_actions = [
            a(f"Preset {i}", lambda _=False, i=i: self.apply_preset(i - 1), str(i)) for i in range(2, 10)
        ]

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.act_open)
        file_menu.addAction(self.act_open_folder)
        file_menu.addAction(self.act_add_mode)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addSeparator()
        for act in (self.act_pacs, self.act_fetch_priors, self.act_export, self.act_send):
            file_menu.addAction(act)
        file_menu.addSeparator()
        for act in (self.act_save_gsps, self.act_save_gsps_as, self.act_load_gsps):
            file_menu.addAction(act)
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)
        view_menu = menu.addMenu("&View")
        layout_menu = view_menu.addMenu("&Layout")
        for act in (*self.layout_actions.values(), None, self.act_link, self.act_compare, self.act_fetch_priors):
            layout_menu.addSeparator() if act is None else layout_menu.addAction(act)
        for act in (self.act_fit, self.act_1to1, self.act_2to1, self.act_zoom_in, self.act_zoom_out, self.act_reset, None,
                    self.act_flip_h, self.act_flip_v, self.act_rotate_left, self.act_rotate_right,
                    self.act_reset_orientation, self.act_loupe, None,
                    self.act_invert, self.act_auto, None, self.act_overlay, self.act_marks, self.act_anatomy, self.act_reset_ctr,
                    None,
                    self.act_mode_window, self.act_mode_pan, None, self.act_next, self.act_prev, self.act_next_frame, self.act_prev_frame):
            view_menu.addSeparator() if act is None else view_menu.addAction(act)
        view_menu.addSeparator()
        view_menu.addAction(self.act_tags)
        panels = view_menu.addMenu("&Panels")  # a closed dock comes back from here
        self.panel_actions = {}
        for dock in (self.studies_dock, self.worklist_dock, self.image_dock, self.findings_dock):
            act = dock.toggleViewAction()
            panels.addAction(act)
            self.panel_actions[dock.objectName()] = act
        measure_menu = menu.addMenu("M&easure")
        for act in (*self.tool_actions.values(), None, self.act_mode_window, self.act_mode_pan, None,
                    self.act_delete_annotation, self.act_undo_annotation, None, self.act_save_gsps, self.act_load_gsps):
            measure_menu.addSeparator() if act is None else measure_menu.addAction(act)
        model_menu = menu.addMenu("&Model")
        for act in (self.act_load_model, self.act_default_model, self.act_train, None, *self.device_actions.values(),
                    None, self.act_score_all):
            model_menu.addSeparator() if act is None else model_menu.addAction(act)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self._action("Mouse and Keys", self._show_help))
        self.act_about = self._action("&About cxr_viewer", self.show_about)
        help_menu.addAction(self.act_about)

        # short button texts (the menus keep the long ones): at 1280x720 the whole row fits, PACS included
        for act, text in ((self.act_mode_window, "Window/Level"), (self.act_mode_pan, "Pan"),
                          (self.act_prev, "Previous"), (self.act_next, "Next"), (self.act_export, "Export")):
            act.setIconText(text)
        tools = QToolBar("Main", self)
        tools.setObjectName("main_toolbar")
        for act in (self.act_open, self.act_open_folder, None, self.act_fit, self.act_1to1, self.act_reset,
                    None, self.act_auto, self.act_invert, self.act_overlay, self.act_anatomy, None, self.act_mode_window, self.act_mode_pan,
                    None, self.act_prev, self.act_next, None, self.act_pacs, self.act_export):
            tools.addSeparator() if act is None else tools.addAction(act)
        self.addToolBar(tools)
        # a second row (a column beside the image would take width, which a 1280x720 screen lacks)
        self.addToolBarBreak()
        measure_bar = QToolBar("Measure", self)
        measure_bar.setObjectName("measure_toolbar")
        self.act_delete_annotation.setIconText("Delete")
        self.act_undo_annotation.setIconText("Undo")
        self.act_save_gsps.setIconText("Save GSPS")
        for act in (*self.tool_actions.values(), None, self.act_delete_annotation, self.act_undo_annotation,
                    self.act_save_gsps, None, *self.layout_actions.values(), self.act_link, self.act_compare, None,
                    self.act_flip_h, self.act_flip_v, self.act_rotate_left, self.act_rotate_right, self.act_loupe):
            measure_bar.addSeparator() if act is None else measure_bar.addAction(act)
        for act, text in ((self.act_flip_h, "Flip H"), (self.act_flip_v, "Flip V"), (self.act_rotate_left, "Rot L"),
                          (self.act_rotate_right, "Rot R"), (self.act_loupe, "Loupe")):
            act.setIconText(text)
        self.addToolBar(measure_bar)
        self.measure_toolbar = measure_bar

    def _wire(self) -> None:
        self.browser.image_selected.connect(self.show_ref)
        self.grid.active_changed.connect(self._on_active_changed)
        for i, view in enumerate(self.grid.views):
            view.voi_changed.connect(lambda voi, inv, v=view: self._on_voi_changed(voi, inv) if v is self.view else None)
            view.pixel_hovered.connect(lambda row, col, v=view: self._on_pixel_hovered(row, col, v))
            view.ctr_edited.connect(lambda ctr, v=view: self._on_ctr_edited(ctr) if v is self.view else None)
            view.measure.added.connect(lambda ann, v=view: self._on_annotation_added(ann) if v is self.view else None)
            view.measure.changed.connect(lambda ann, v=view: self._on_annotation_changed(ann) if v is self.view else None)
            view.measure.ask_text = self._ask_annotation_text
            runner = self.image_runners[i]
            runner.finished.connect(lambda image, i=i: self._on_image_loaded(image, i))
            runner.failed.connect(lambda msg, i=i: self._on_image_failed(msg, i))
            runner.busy_changed.connect(self._update_busy)
        c = self.side.controls
        c.preset_chosen.connect(lambda voi: self.view.set_voi(voi))
        c.window_edited.connect(lambda voi: self.view.set_voi(voi))
        c.invert_toggled.connect(self.set_invert)
        c.frame_chosen.connect(lambda f: self.show_ref(self.current_ref, f) if self.current_ref else None)

        self.index_runner.progress.connect(self._on_index_progress)
        self.index_runner.finished.connect(self._on_index_done)
        self.index_runner.failed.connect(lambda msg: self._task_failed("Opening failed", msg))
        self.index_runner.cancelled.connect(lambda: self._show_message("Opening cancelled."))
        self.index_runner.failed.connect(lambda _msg: setattr(self, "_after_index", None))
        self.index_runner.cancelled.connect(lambda: setattr(self, "_after_index", None))
        self.priors_runner.progress.connect(self._on_priors_progress)
        self.priors_runner.finished.connect(self._on_priors_fetched)
        self.priors_runner.failed.connect(lambda msg: self._task_failed("Fetch priors failed", msg))
        self.priors_runner.cancelled.connect(lambda: self._show_message("Fetching the priors was cancelled."))
        self.priors_runner.busy_changed.connect(self._update_busy)
        self.thumb_runner.progress.connect(self._on_thumbnail)
        self.index_runner.busy_changed.connect(self._update_busy)
        self.model_runner.finished.connect(self._on_model_loaded)
        self.model_runner.failed.connect(self._on_model_failed)
        self.score_runner.finished.connect(self._on_scored)
        self.score_runner.failed.connect(lambda msg: self.findings.clear_result(f"scoring failed: {msg}"))
        self.score_runner.failed.connect(lambda _msg: self.view.set_finding_marks(()))
        self.findings.heatmap_requested.connect(self._show_heatmap)
        self.findings.opacity_changed.connect(lambda v: self.view.set_heatmap_opacity(v))
        self.findings.score_anyway_requested.connect(lambda: self._score_current(score_anyway=True))
        self.anatomy_model_runner.finished.connect(self._on_anatomy_model_loaded)
        self.anatomy_model_runner.failed.connect(self._on_anatomy_model_failed)
        self.anatomy_runner.finished.connect(self._on_anatomy)
        self.anatomy_runner.failed.connect(self._on_anatomy_failed)
        self.worklist.start_requested.connect(self.score_all)
        self.worklist.cancel_requested.connect(self.worklist_runner.cancel)
        self.worklist.image_requested.connect(self._open_from_worklist)
        self.export_runner.progress.connect(self._on_index_progress)
        self.export_runner.finished.connect(self._on_export_done)
        self.export_runner.failed.connect(lambda msg: self._task_failed("Export failed", msg))
        self.export_runner.cancelled.connect(lambda: self._show_message("Export cancelled."))
        self.export_runner.busy_changed.connect(self._update_busy)
        self.worklist_runner.progress.connect(self._on_worklist_row)
        self.worklist_runner.finished.connect(lambda n: self.worklist.finish(
            f"{n - self.worklist.set_aside} image(s) scored"
            + (f", {self.worklist.set_aside} set aside as outside intended use" if self.worklist.set_aside else "")
            + "; sorted by pneumonia score."))
        self.worklist_runner.failed.connect(lambda msg: self.worklist.finish(f"Stopped: {msg}"))
        self.worklist_runner.cancelled.connect(lambda: self.worklist.finish("Cancelled; the rows so far are kept.",
                                                                                  cancelled=True))

    # --- opening -----------------------------------------------------------------------
    def open_paths(self, paths: list[str], add: bool | None = None) -> None:
        """Index ``paths``; ``add``: add them to the list (default: File > Open Adds to the List)."""
        paths = [os.fspath(p) for p in paths]
        if not paths:
            return
        self._open_adds = self.act_add_mode.isChecked() if add is None else add
        self.settings.add_recent(paths)
        self.progress.setRange(0, 0)
        self._show_message(f"Opening {len(paths)} item(s)...")
        self.thumb_runner.cancel()
        self.index_runner.submit(index_paths, paths)

    def open_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open images", self.settings.last_folder(), FILE_FILTER)
        if files:
            self.settings.set_last_folder(os.path.dirname(files[0]))
            self.open_paths(files)

    def open_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open folder (searched recursively)", self.settings.last_folder())
        if folder:
            self.settings.set_last_folder(folder)
            self.open_paths([folder])

    def cancel_loading(self) -> None:
        for runner in (self.index_runner, *self.image_runners, self.thumb_runner, self.worklist_runner,
                       self.export_runner, self.priors_runner):
            runner.cancel()

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent()
        for path in recent:
            act = self.recent_menu.addAction(path)
            act.triggered.connect(lambda _=False, p=path: self.open_paths([p]))
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def dragEnterEvent(self, event):  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def _on_index_progress(self, p: Progress) -> None:
        if p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
        self._show_message(f"{p.stage.capitalize()}: {p.done}" + (f" of {p.total}" if p.total else ""))

    def _on_index_done(self, index: StudyIndex) -> None:
        new_paths = [r.path for r in index.images()]
        if getattr(self, "_open_adds", False):
            index = merge_indexes(self.study_index, index)
        elif self.worklist.table.rowCount():  # rows of the files no longer listed go with them
            self.worklist.clear("Another folder was opened: the worklist of the previous one was removed.")
        self.study_index = index
        self.browser.set_index(index)
        refs = self.browser.refs()
        n_err = len(index.errors)
        msg = f"{len(refs)} image(s) opened" + (f"; {n_err} file(s) could not be opened (listed under the studies)" if n_err else "")
        n_ps = len(index.presentation_states)
        if n_ps:
            msg += f"; {n_ps} presentation state(s) (annotations): shown with the images they reference"
        self._show_message(msg)
        self.index_loaded.emit(index)
        after, self._after_index = self._after_index, None
        if refs and after is not None:  # e.g. priors fetched: the shown image stays, then they are hung
            self.thumb_runner.submit(thumbnails_task, refs)
            after()
        elif refs:
            added = set(new_paths)
            first = next((r for r in refs if r.path in added), refs[0])
            self.browser.select(first)  # loads it
            self.thumb_runner.submit(thumbnails_task, refs)
        else:
            self.view.clear()
            self._clear_anatomy("No image shown." if self.act_anatomy.isChecked() else "")
            self.side.controls.set_image(None)
            self.side.metadata.set_image(None)

    # --- showing -----------------------------------------------------------------------
    def show_ref(self, ref: ImageRef, frame: int = 0, viewport: int | None = None) -> None:
        """Load ``ref`` into ``viewport`` (default: the active one)."""
        viewport = self.grid.active if viewport is None else viewport
        if viewport == self.grid.active:
            self.current_ref = ref
        self._show_message(f"Loading {os.path.basename(ref.path)}...")
        from cxr_viewer.clinical.gsps import load_image_and_gsps_task

        self.image_runners[viewport].submit(load_image_and_gsps_task, ref, frame, self._gsps_folders)

    def _on_image_loaded(self, image: LoadedImage, viewport: int = 0) -> None:
        view = self.grid.views[viewport]
        self._view_scores.pop(view, None)  # results of the image it showed before (never this object)
        self._view_anatomy.pop(view, None)
        keep_view = view.image is not None and view.image.ref.path == image.ref.path
        keep_voi = view.voi if keep_view and isinstance(view.voi, Window) else None
        if view is not self.view:  # a prior or another viewport: drawn, the panels stay with the active one
            view.set_image(image, keep_voi, keep_view=keep_view)
            view.measure.set_annotations(self.annotation_store.get((image.ref.path, image.frame)))
            self._show_message(self._viewport_notes.pop(viewport, "")
                               or f"{os.path.basename(image.ref.path)} in viewport {viewport + 1}")
            self.viewport_shown.emit(viewport, image)
            return
        self.side.controls.set_image(image)
        self.side.metadata.set_image(image)
        self.view.set_image(image, keep_voi, keep_view=keep_view)
        sp = image.ref.meta.spacing
        self.units_label.setText(
            f"Pixel {sp.col_mm:.4g} x {sp.row_mm:.4g} {sp.label}" if sp else "Lengths in px (no pixel spacing)")
        frames = f", frame {image.frame + 1}/{image.ref.frames}" if image.ref.frames > 1 else ""
        self._show_message(f"{os.path.basename(image.ref.path)}{frames}")
        self._show_annotations(image)
        self.viewport_shown.emit(viewport, image)
        self.image_shown.emit(image)
        self._score_current()
        self._segment_current()

    def _on_image_failed(self, message: str, viewport: int = 0) -> None:
        self._viewport_notes.pop(viewport, None)
        if self.grid.views[viewport] is not self.view:
            self.grid.views[viewport].clear()
            self._task_failed(f"Cannot show this image in viewport {viewport + 1}", message)
            return
        # nothing of the previous image may stay beside the empty viewport: scores, heatmap, readout
        self.view.clear()
        self.last_score = None
        self._clear_anatomy("No image shown." if self.act_anatomy.isChecked() else "")
        self.findings.show_no_image("no image shown (it could not be opened)")
        self.position_label.setText("")
        self.value_label.setText("")
        self.side.controls.set_image(None)
        self.side.metadata.set_image(None)
        self._task_failed("Cannot show this image", message)

    # --- reading room: layouts, the active viewport, comparison with priors ----------------------
    def set_layout(self, name: str) -> None:
        self.grid.set_layout(name)
        self.layout_actions[name].setChecked(True)

    def set_linked(self, on: bool) -> None:
        self.act_link.setChecked(on)
        self.grid.set_linked(on)

    def _on_active_changed(self, _index: int) -> None:
        """The panels, the studies list and the tools follow the active viewport."""
        view, image = self.view, self.view.image
        for other in self.grid.views:  # scores, heatmap and outlines belong to the active viewport only
            if other is not view:
                other.set_heatmap(None)
                other.set_finding_marks(())
                other.set_anatomy(None)
        self.current_ref = image.ref if image is not None else None
        self.act_invert.setChecked(view.user_invert)
        self.side.controls.set_image(image)
        self.side.metadata.set_image(image)
        self.last_score = None
        if image is None:
            self.findings.show_no_image("no image in this viewport: choose one in the studies list")
            self._clear_anatomy()
            return
        self._on_voi_changed(view.voi, view.inverted)
        self.browser.select(image.ref, quiet=True)
        self._show_annotations(image)
        self._score_current(reuse=True)
        self._segment_current(reuse=True)

    def compare_with_prior(self) -> bool:
        """The chest protocol: the current PA left, the newest earlier study of the same patient right."""
        image = self.view.image
        if image is None:
            self._show_message("Open an image first: Compare with Prior needs a current study.")
            return False
        hanging = compare_with_prior(self.study_index, image.ref)
        if len(hanging.images) < 2:
            hint = " (File > Fetch Priors from PACS can get one)" if "no earlier study" in hanging.reason else ""
            self._show_message(f"No prior to compare with: {hanging.reason}{hint}.")
            return False
        self.set_layout("1x2" if self.grid.layout_name == "1x1" else self.grid.layout_name)
        current, prior = hanging.images
        self.grid.set_active(0)
        if self.grid.views[0].image is None or self.grid.views[0].image.ref.path != current.path:
            self.browser.select(current)  # loads it in the active (left) viewport
        self.show_ref(prior, 0, viewport=1)
        note = f"Comparing with the prior of {_date_text(prior.meta.study_date)} (right)."
        self._viewport_notes[1] = note  # said again once it is shown
        self._show_message(note)
        return True

    def fetch_priors(self) -> bool:
        """Query the PACS for the shown patient's earlier studies, retrieve the newest into the cache
        (a worker, with progress and Cancel), then open it beside the current image."""
        image = self.view.image
        if image is None:
            self._show_message("Open an image first: Fetch Priors looks for earlier studies of its patient.")
            return False
        ref = image.ref
        if ref.kind != "dicom" or not ref.meta.patient_id.strip():
            self._show_message("Fetch Priors: this image has no PatientID, so its priors cannot be found.")
            return False
        study = study_of(self.study_index, ref)
        if study is None or not study.date:
            self._show_message("Fetch Priors: this study has no date, so which studies are earlier is unknown.")
            return False
        try:
            nodes = self.settings.pacs_store().load()
        except ValueError as exc:
            self._show_message(f"Fetch Priors: {exc}")
            return False
        if not nodes:
            self._show_message("Fetch Priors: no PACS configured (File > PACS... > Nodes).")
            return False
        last = self.settings.last_pacs_node()
        node = next((n for n in nodes if n.name == last), nodes[0])
        go, password = self._password_book().ask(self, node)
        if not go:
            return False
        from cxr_viewer.clinical.pacs import fetch_priors_task

        cache = self.settings.pacs_cache_dir()
        os.makedirs(cache, exist_ok=True)
        self._priors_for = ref
        self._priors_node = node.name
        self._show_message(f"Fetching priors from {node.name}: searching...")
        self.priors_runner.submit(fetch_priors_task, node, ref.meta.patient_id.strip(), study.uid, study.date, cache,
                                  password)
        return True

    def _on_priors_progress(self, p: Progress) -> None:
        if p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
        if p.stage == "query":
            self._show_message(f"Fetching priors from {self._priors_node}: searching...")
        else:
            self._show_message(f"Fetching priors from {self._priors_node}: {p.done}"
                               + (f" of {p.total}" if p.total else "") + " retrieved")

    def _on_priors_fetched(self, fetched) -> None:
        if not fetched.studies:
            self._show_message(f"{self._priors_node} has no earlier study of this patient.")
            return
        if not fetched.paths:
            self._show_message(f"{self._priors_node} sent no images for the prior study.")
            return
        ref = self._priors_for
        folders = sorted({os.path.dirname(p) for p in fetched.paths})
        dates = ", ".join(_date_text(s.study_date) for s in fetched.studies)
        self._show_message(f"Retrieved the prior of {dates}; opening it...")

        def hang() -> None:
            current = next((r for r in self.browser.refs() if r.path == ref.path), None)
            if current is None or self.grid.views[0].image is None:
                return
            if self.view is not self.grid.views[0] and self.grid.views[0].image.ref.path == ref.path:
                self.grid.set_active(0)
            self.browser.select(current, quiet=True)
            self.compare_with_prior()

        self.open_paths(folders, add=True)
        self._after_index = hang  # after the submit: cancelling an earlier open clears it

    def set_loupe(self, on: bool) -> None:
        self.act_loupe.setChecked(on)
        for view in self.grid.views:
            view.set_loupe(on)

    def show_tags(self) -> None:
        from cxr_viewer.gui.tag_browser import TagBrowser

        image = self.view.image
        if image is None:
            self._show_message("Open an image first.")
            return
        if image.ref.kind != "dicom":
            self._show_message("DICOM tags: this is a PNG/JPEG file, it has none.")
            return
        if getattr(self, "tag_browser", None) is None:
            self.tag_browser = TagBrowser(self)
        self.tag_browser.show_file(image.ref.path)
        self.tag_browser.show()
        self.tag_browser.raise_()

    def _on_thumbnail(self, thumb: Thumbnail) -> None:
        if thumb.pixels is None and thumb.error and all(e.path != thumb.path for e in self.study_index.errors):
            # indexed, yet its pixels do not decode (a truncated JPEG): listed under "Could not open"
            self.study_index = replace(self.study_index, errors=(*self.study_index.errors,
                                                                 OpenError(thumb.path, thumb.error)))
        self.browser.set_thumbnail(thumb.path, thumb.pixels, thumb.error)

    # --- model and scoring ---------------------------------------------------------------
    def load_model(self, path: str) -> None:
        self.findings.set_status(f"Loading model {os.path.basename(path)}...")
        self.model_runner.submit(self.models.load_task, path, self.settings.device())

    def load_model_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model", self.settings.last_folder(),
                                              "cxr_viewer models (*.safetensors)")
        if path:
            self.load_model(path)

    def use_default_model(self) -> None:
        path = default_model_path()
        if path is None:
            self._show_message("No default model is installed (models/default.safetensors).")
            return
        self.settings.set_model_path("")
        self.load_model(path)

    def set_device(self, device: str) -> None:
        self.settings.set_device(device)
        summary = self.models.summary()
        if summary is not None:
            self.load_model(summary.path)

    def open_training_dialog(self) -> None:
        from cxr_viewer.gui.training_dialog import TrainingDialog

        summary = self.models.summary()
        dialog = TrainingDialog(self, summary.path if summary else None)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.model_ready.connect(self.load_model)
        self.training_dialog = dialog
        dialog.show()

    def _on_model_loaded(self, summary: ModelSummary) -> None:
        self._view_scores.clear()  # scores of the model before are not this one's
        previous = self.model_summary
        self.model_summary = summary
        if summary.path != default_model_path():
            self.settings.set_model_path(summary.path)
        if previous is not None and previous.sha256 != summary.sha256 and self.worklist.table.rowCount():
            self.worklist.clear(f"Model changed to {summary.name} v{summary.version}: the worklist scores of the "
                                "previous model were removed; score again.")
        self.view.set_heatmap(None)
        self.view.set_finding_marks(())
        self.last_score = None
        self.findings.set_model(summary)
        self.findings.set_status("")
        self.device_label.setText(f"Model on {summary.device}")
        self.model_changed.emit(summary)
        self._score_current()

    def _on_model_failed(self, message: str) -> None:
        # the previous model, if any, stays loaded: its scores of the shown image are made again
        self.view.set_heatmap(None)
        self.view.set_finding_marks(())
        self.last_score = None
        self.findings.set_model(self.models.summary(), error=message)
        self.findings.set_status("")
        self._show_message(f"Model not loaded: {message}")
        self.model_changed.emit(self.models.summary())
        self._score_current()

    def _score_current(self, score_anyway: bool = False, reuse: bool = False) -> None:
        image = self.view.image
        scorer = self.models.scorer
        if image is None or scorer is None:
            return
        shown, result = self._view_scores.get(self.view, (None, None))
        if reuse and shown is image and result.model_sha256 == scorer.meta.weights_sha256:
            self.score_runner.cancel()  # the other viewport's score, if still running, is not wanted now
            self._on_scored(result)  # this very image, scored by this model: shown again as it was
            return
        self.findings.clear_result("scoring...")
        self.score_runner.submit(score_image_task, scorer, image, True, score_anyway=score_anyway)

    def _on_scored(self, result: ScoreResult) -> None:
        image = self.view.image
        if image is None or (result.path, result.frame) != (image.ref.path, image.frame):
            return  # scores of an image no longer shown
        self.last_score = result
        self._view_scores[self.view] = (image, result)
        self.findings.set_result(result)
        self._show_heatmap(self.findings.shown_heatmap())
        self.view.set_finding_marks(finding_marks(result, tuple(image.shape[:2])))
        self.scored.emit(result)

    def _show_heatmap(self, head: str) -> None:
        result = self.last_score
        image = self.view.image
        if (not head or result is None or image is None or head not in result.heatmaps
                or (result.path, result.frame) != (image.ref.path, image.frame)):
            self.view.set_heatmap(None)
            return
        self.view.set_heatmap(result.heatmaps[head], self._heat_lut)
        self.view.set_heatmap_opacity(self.findings.opacity.value() / 100.0)

    def score_all(self) -> None:
        scorer = self.models.scorer
        refs = self.browser.refs()
        if scorer is None:
            self.worklist.info.setText("No model loaded: nothing can be scored.")
            return
        if not refs:
            self.worklist.info.setText("Open images first.")
            return
        from cxr_viewer.training.evaluation import score_rows  # per-file failures, never NaN

        self.worklist_dock.raise_()
        self.worklist.begin(len(refs))
        self.worklist_runner.submit(score_rows, scorer, refs)  # one bad file never stops the list

    def _on_worklist_row(self, row: WorklistRow) -> None:
        self.worklist.add_row(row)

    def _open_from_worklist(self, path: str) -> None:
        ref = next((r for r in self.browser.refs() if r.path == path), None)
        if ref is not None:
            self.browser.select(ref)

    # --- anatomy: lung and heart outlines, cardiothoracic ratio -------------------------------
    def load_anatomy_model(self, path: str | None = None) -> None:
        """Load the anatomy model in a worker (once; again only after a failure)."""
        if self.anatomy_model_runner.busy:
            return
        path = path or default_anatomy_path()
        self.findings.anatomy.show_status(f"Loading the anatomy model {os.path.basename(path)}...")
        self.anatomy_model_runner.submit(self.anatomy_models.load_task, path)

    def set_anatomy_visible(self, on: bool) -> None:
        self.act_anatomy.setChecked(on)
        if not on:
            self._clear_anatomy()
            return
        if self.anatomy_models.model is None:
            self.load_anatomy_model()  # then segments the shown image
        else:
            self._segment_current()

    def _clear_anatomy(self, status: str = "") -> None:
        self.anatomy_runner.cancel()
        self.anatomy_result = None
        self.view.set_anatomy(None)
        self.act_reset_ctr.setEnabled(False)
        if self.anatomy_model_runner.busy:
            return  # the panel says "Loading..." until the model is there or not
        if status:
            self.findings.anatomy.show_status(status)
        elif self.anatomy_models.model is None and self.anatomy_error:
            self.findings.anatomy.show_unavailable(self.anatomy_error)
        else:
            self.findings.anatomy.show_off()

    def _on_anatomy_model_loaded(self, summary: AnatomyModelSummary) -> None:
        self._view_anatomy.clear()
        self.anatomy_summary = summary
        self.anatomy_error = ""
        self.findings.anatomy.set_model(summary)
        self.act_anatomy.setToolTip(f"Anatomy (Shift+A): {summary.title}")
        self.anatomy_model_changed.emit(summary)
        if self.act_anatomy.isChecked():
            self._segment_current()
        else:
            self.findings.anatomy.show_off()

    def _on_anatomy_model_failed(self, message: str) -> None:
        # no outline without a model: the action goes off and says why; turning it on tries again
        self.anatomy_error = message
        if self.act_anatomy.isChecked():  # asked for now (at start-up only the panel says it)
            self._show_message(f"Anatomy model not available: {message}")
        self.act_anatomy.setChecked(False)
        self.act_anatomy.setToolTip(f"Anatomy model not available: {message}")
        self.anatomy_result = None
        self.view.set_anatomy(None)
        self.act_reset_ctr.setEnabled(False)
        self.findings.anatomy.show_unavailable(message)
        self.anatomy_model_changed.emit(None)

    def _segment_current(self, reuse: bool = False) -> None:
        image, result = self.view.image, self.anatomy_result
        if result is not None and self.view.anatomy is result:
            return  # already drawn on this image (the same frame shown again)
        self.anatomy_result = None
        self.act_reset_ctr.setEnabled(False)
        model = self.anatomy_models.model
        if not self.act_anatomy.isChecked() or image is None or model is None:
            return  # off, nothing shown, or the model is loading (it segments when loaded)
        shown, made_by, cached = self._view_anatomy.get(self.view, (None, None, None))
        if reuse and shown is image and made_by is model:
            self.anatomy_runner.cancel()
            self._on_anatomy(cached)  # this very image's outlines by this model: drawn again
            return
        self.findings.anatomy.show_status("Outlining the lungs and heart...")
        self.anatomy_runner.submit(segment_image_task, model, image)

    def _on_anatomy(self, result: AnatomyResult) -> None:
        image = self.view.image
        if (not self.act_anatomy.isChecked() or image is None
                or (result.path, result.frame, result.shape) != (image.ref.path, image.frame, tuple(image.shape))):
            return  # outlines of an image no longer shown
        self.anatomy_result = result
        self._view_anatomy[self.view] = (image, self.anatomy_models.model, result)
        self.view.set_anatomy(result)
        self.act_reset_ctr.setEnabled(result.ctr is not None)
        self.findings.anatomy.show_result(result, result.ctr, image.ref.meta.spacing)
        QTimer.singleShot(0, self._scroll_to_anatomy)  # once the panel has laid out its new text
        self.anatomy_shown.emit(result)

    def _scroll_to_anatomy(self) -> None:
        box = self.findings.anatomy
        self.findings_scroll.ensureWidgetVisible(box.notice, 0, 4)
        self.findings_scroll.ensureWidgetVisible(box.title, 0, 4)

    def _on_anatomy_failed(self, message: str) -> None:
        self.anatomy_result = None
        self.view.set_anatomy(None)
        self.findings.anatomy.show_status(f"Outlining failed: {message}")

    def _on_ctr_edited(self, ctr: CtrMeasurement) -> None:
        image = self.view.image
        self.findings.anatomy.show_ctr(ctr, image.ref.meta.spacing if image is not None else None)

    def reset_ctr(self) -> None:
        """The model's CTR lines again (the user's corrections dropped)."""
        result, image = self.anatomy_result, self.view.image
        if result is None or image is None:
            return
        self.view.set_ctr(result.ctr)
        self.findings.anatomy.show_ctr(result.ctr, image.ref.meta.spacing, result.ctr_note)

    # --- clinical integration: PACS, exports ------------------------------------------------
    def _password_book(self):
        from cxr_viewer.gui.pacs_dialog import PasswordBook

        if self._passwords is None:
            self._passwords = PasswordBook()
        return self._passwords

    def open_pacs_dialog(self) -> None:
        from cxr_viewer.gui.pacs_dialog import PacsDialog

        if self.pacs_dialog is None:
            self.pacs_dialog = PacsDialog(self.settings, self, self._password_book())
            self.pacs_dialog.open_requested.connect(self.open_paths)
        self.pacs_dialog.show()
        self.pacs_dialog.raise_()

    def _scored_image(self) -> tuple[LoadedImage, ScoreResult] | None:
        image, result = self.view.image, self.last_score
        if image is None or result is None or (result.path, result.frame) != (image.ref.path, image.frame):
            self._show_message("Open an image and wait for its scores before exporting.")
            return None
        return image, result

    def export_dialog(self) -> None:
        from cxr_viewer.gui.export_dialog import ExportDialog, export_task

        scored = self._scored_image()
        if scored is None:
            return
        image, result = scored
        folder = self.settings.export_folder() or os.path.join(os.path.expanduser("~"), "cxr_viewer_exports")
        opened = self.browser.refs()
        dialog = ExportDialog(image, folder, self.settings.deidentify_exports(), self, n_opened=len(opened))
        if dialog.exec() != ExportDialog.DialogCode.Accepted:
            return
        choices = dialog.choices()
        all_images = choices.pop("all_images", False)
        folder = dialog.folder.text().strip()
        if not folder or not any(v for k, v in choices.items() if k != "deidentify"):
            self._show_message("Nothing exported: choose a folder and at least one output.")
            return
        if self.export_runner.busy:
            self._show_message("An export or send is still running: wait for it (or press Esc) first.")
            return
        self.settings.set_export_folder(folder)
        self.settings.set_deidentify_exports(choices["deidentify"])
        scorer = self.models.scorer
        meta = scorer.meta if scorer is not None and scorer.meta.weights_sha256 == result.model_sha256 else None
        self._show_message("Exporting...")
        others = [r for r in opened if r.path != image.ref.path] if all_images else []
        self.export_runner.submit(export_task, image, result, meta, folder, voi=self.view.voi, others=others,
                                  model_path=scorer.path if scorer is not None else "",
                                  device=self.settings.device(), annotations=self._all_annotations(), **choices)

    def send_results_dialog(self) -> None:
        from PySide6.QtWidgets import QInputDialog

        scored = self._scored_image()
        if scored is None:
            return
        if scored[0].ref.kind != "dicom":
            self._show_message("Only results of DICOM images can go to a PACS (this is a PNG/JPEG).")
            return
        try:
            nodes = self.settings.pacs_store().load()
        except ValueError as exc:
            self._show_message(str(exc))
            return
        if not nodes:
            self._show_message("No PACS configured: File > PACS > Nodes.")
            return
        names = [n.name for n in nodes]
        last = self.settings.last_pacs_node()
        name, ok = QInputDialog.getItem(self, "Send results", "Store the SR and Secondary Capture on:", names,
                                        names.index(last) if last in names else 0, False)
        if not ok:
            return
        self.send_results(next(n for n in nodes if n.name == name))

    def send_results(self, node, password: str | None = None) -> None:
        from cxr_viewer.gui.export_dialog import send_results_task

        scored = self._scored_image()
        if scored is None:
            return
        if self.export_runner.busy:
            self._show_message("An export or send is still running: wait for it (or press Esc) first.")
            return
        if password is None:
            go, password = self._password_book().ask(self, node)
            if not go:
                return
        key = self._image_key()
        annotations = self.annotation_store.get(key) if key else ()
        gsps = self._build_gsps() if annotations else None  # the annotations go as a presentation state too
        self._show_message(f"Sending results to {node.name}...")
        outbox = os.path.join(self.settings.pacs_cache_dir(), "outbox")
        self.export_runner.submit(send_results_task, node, password, *scored, outbox, annotations=annotations,
                                  gsps=gsps)

    def _on_export_done(self, value) -> None:
        if not isinstance(value, tuple):  # a SendResult: results sent to a PACS
            sent, failed = value.sent, value.failed
            gsps = any(p.endswith("_gsps.dcm") for p in sent)
            msg = f"Sent {len(sent)} object(s) (SR, Secondary Capture{', annotations as GSPS' if gsps else ''})"
            if failed:
                msg += f"; {len(failed)} failed: {failed[0][1]}"
            self._show_message(msg)
        else:
            folder = os.path.dirname(value[0]) if value else ""
            self._show_message(f"Exported {len(value)} file(s) to {folder}")
        self.exported.emit(value)

    # --- display -----------------------------------------------------------------------
    def set_invert(self, on: bool) -> None:
        self.view.set_user_invert(on)
        self.act_invert.setChecked(on)

    def _on_invert_action(self, checked: bool) -> None:
        self.set_invert(checked)

    def auto_window(self) -> None:
        if self.view.image is not None:
            self.view.set_voi(self.view.image.auto_window())

    def apply_preset(self, i: int) -> None:
        presets = self.side.controls.presets()
        if 0 <= i < len(presets):
            self.view.set_voi(presets[i])

    def reset_view(self) -> None:
        self.view.reset()
        self.act_invert.setChecked(False)

    def step_frame(self, delta: int) -> None:
        image = self.view.image
        if image is not None and image.ref.frames > 1:
            frame = min(max(image.frame + delta, 0), image.ref.frames - 1)
            if frame != image.frame:
                self.show_ref(image.ref, frame)

    def _set_left_mode(self, mode: str) -> None:
        """Window/level, pan, or a measuring tool (tools are not remembered across sessions)."""
        for view in self.grid.views:
            view.set_left_mode(mode)
        act = self.tool_actions.get(mode) or (self.act_mode_pan if mode == "pan" else self.act_mode_window)
        act.setChecked(True)
        if mode in TOOLS:
            self._show_message(f"{TOOLS[mode][0]}: {TOOLS[mode][2]}. W or P leaves the tool.")
        else:
            self.settings.set_left_mouse_mode(mode)

    # --- annotations: rulers, angles, ROIs, arrows, text; saved as a DICOM GSPS ---------------
    def _image_key(self) -> tuple[str, int] | None:
        image = self.view.image
        return None if image is None else (image.ref.path, image.frame)

    def _redraw_annotations(self) -> None:
        key = self._image_key()
        self.view.measure.set_annotations(self.annotation_store.get(key) if key else ())

    def _show_annotations(self, image: LoadedImage) -> None:
        """The image's annotations of this session, or, the first time a DICOM is shown, those of
        the newest presentation state beside it that references it."""
        key = (image.ref.path, image.frame)
        if key not in self._gsps_looked and key not in self.annotation_store and image.ref.kind == "dicom":
            self._gsps_looked.add(key)
            from cxr_viewer.clinical.gsps import gsps_in_folder

            folder = os.path.dirname(os.path.abspath(image.ref.path))
            if folder not in self._gsps_folders:  # scanned by the loading worker; here only if it was not
                self._gsps_folders[folder] = gsps_in_folder(folder)
            found = self._gsps_folders[folder].get(image.ref.sop_instance_uid, []) if image.ref.sop_instance_uid else []
            if found:
                self.load_annotations(found[0], announce=len(found))
                return
        self._redraw_annotations()

    def load_annotations(self, path: str, announce: int = 1) -> bool:
        """Read the shown image's annotations (and window) from the GSPS at ``path``."""
        from cxr_viewer.clinical.gsps import read_gsps
        from cxr_viewer.common.errors import UserError

        image, key = self.view.image, self._image_key()
        if image is None or key is None:
            return False
        try:
            content = read_gsps(path, image.ref.sop_instance_uid or None, image.frame)
        except (UserError, OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            self._show_message(f"Cannot read the presentation state {os.path.basename(path)}: {exc}")
            return False
        if image.ref.sop_instance_uid and image.ref.sop_instance_uid not in content.referenced_sop_instance_uids:
            self._show_message(f"{os.path.basename(path)} does not reference this image: nothing loaded.")
            return False
        self.annotation_store.set_all(key, content.annotations, undoable=key in self.annotation_store)
        if content.window is not None:
            self.view.set_voi(content.window)
        if content.inverse is not None:
            self.set_invert(content.inverse != image.monochrome1)
        self._redraw_annotations()
        more = f" (newest of {announce} presentation states here)" if announce > 1 else ""
        skipped = f"; {content.skipped} object(s) it has could not be shown" if content.skipped else ""
        self._show_message(f"Loaded {len(content.annotations)} annotation(s) and the window from "
                           f"{os.path.basename(path)}{more}{skipped}")
        return True

    def load_annotations_dialog(self) -> None:
        image = self.view.image
        if image is None:
            self._show_message("Open an image first.")
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load annotations (GSPS)", os.path.dirname(image.ref.path),
                                              "DICOM presentation states (*.dcm);;All files (*)")
        if path:
            self.load_annotations(path)

    def _ask_annotation_text(self) -> str | None:
        from PySide6.QtWidgets import QInputDialog

        text, ok = QInputDialog.getText(self, "Text annotation", "Text:")
        return text.strip() if ok and text.strip() else None

    def _on_annotation_added(self, ann: Annotation) -> None:
        key = self._image_key()
        if key is None:
            return
        self.annotation_store.add(key, ann)
        self._redraw_annotations()
        self.view.measure.select(ann.uid)
        label = label_text(ann, self.view.image).replace("\n", "; ")
        self._show_message(f"Added {ann.title}" + (f": {label}" if label and ann.kind != "text" else "")
                           + ". Delete removes it, Ctrl+Z undoes.")

    def _on_annotation_changed(self, ann: Annotation) -> None:
        key = self._image_key()
        if key is not None and ann.uid in {a.uid for a in self.annotation_store.get(key)}:
            self.annotation_store.replace(key, ann)

    def delete_selected_annotation(self) -> None:
        key, uid = self._image_key(), self.view.measure.selected_uid
        if key is None or uid is None:
            self._show_message("No annotation selected: click one first.")
            return
        ann = self.annotation_store.remove(key, uid)
        self._redraw_annotations()
        self._show_message(f"Deleted the {ann.title} (Ctrl+Z brings it back).")

    def undo_annotation(self) -> None:
        key = self._image_key()
        if key is None or not self.annotation_store.undo(key):
            self._show_message("Nothing to undo on this image.")
            return
        self._redraw_annotations()
        self._show_message("Undone.")

    def _all_annotations(self) -> dict:
        """Every image's annotations of this session, by (path, frame): exports draw them."""
        return {key: self.annotation_store.get(key) for key in self.annotation_store.image_keys()}

    def annotation_labels(self) -> dict[str, str]:
        image, key = self.view.image, self._image_key()
        return {a.uid: label_text(a, image) for a in self.annotation_store.get(key)} if key else {}

    def _build_gsps(self):
        """The shown image's GSPS dataset, or None (and says why)."""
        from cxr_viewer.clinical.dicom_results import read_source_header
        from cxr_viewer.clinical.gsps import build_gsps
        from cxr_viewer.common.errors import UserError

        image, key = self.view.image, self._image_key()
        if image is None or key is None:
            self._show_message("Open an image first.")
            return None
        if image.ref.kind != "dicom":
            self._show_message("A GSPS (DICOM presentation state) needs a DICOM source image; this is a "
                               f"{image.ref.kind} file. Its annotations stay in this session and go into exports.")
            return None
        anns = self.annotation_store.get(key)
        if not anns:
            self._show_message("No annotations on this image to save.")
            return None
        voi = self.view.voi
        try:
            return build_gsps(read_source_header(image.ref.path), anns, frame=image.frame,
                              labels=self.annotation_labels(), window=voi if isinstance(voi, Window) else None,
                              inverse=self.view.inverted)
        except UserError as exc:
            self._show_message(f"Annotations not saved: {exc}")
            return None

    def default_gsps_path(self) -> str | None:
        from cxr_viewer.clinical.gsps import gsps_name

        image = self.view.image
        if image is None:
            return None
        return os.path.join(os.path.dirname(os.path.abspath(image.ref.path)),
                            gsps_name(image.ref.path, image.frame, image.ref.frames))

    def save_annotations(self, path: str | None = None, ds=None) -> str | None:
        """Write the GSPS (atomically) to ``path``, by default beside the image; returns the path.
        ``ds``: the GSPS when already built (Save As builds it before asking where)."""
        from cxr_viewer.clinical.dicom_results import write_dataset
        from cxr_viewer.common.errors import UserError

        ds = ds if ds is not None else self._build_gsps()
        if ds is None:
            return None
        path = path or self.default_gsps_path()
        try:
            write_dataset(ds, path)
        except UserError as exc:
            self._show_message(f"Annotations not saved: {exc}. File > Save Annotations (GSPS) As... chooses "
                               "another folder.")
            return None
        key = self._image_key()
        self._gsps_looked.add(key)
        self._gsps_folders.pop(os.path.dirname(os.path.abspath(path)), None)  # scanned again when needed
        self._show_message(f"Saved {len(self.annotation_store.get(key))} annotation(s) as a presentation state: {path}")
        return path

    def save_annotations_as(self) -> None:
        ds = self._build_gsps()
        if ds is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save annotations (GSPS)", self.default_gsps_path() or "",
                                              "DICOM (*.dcm)")
        if path:
            self.save_annotations(path, ds)

    def _on_voi_changed(self, voi: Voi, _inverted: bool) -> None:
        self.side.controls.show_voi(voi, self.view.user_invert)

    def _on_pixel_hovered(self, row: int, col: int, view: ImageView | None = None) -> None:
        image = (view or self.view).image
        report = image.pixel_report(row, col) if image is not None and row >= 0 else None
        if report is None:
            self.position_label.setText("")
            self.value_label.setText("")
            return
        stored, value = report
        sp = image.ref.meta.spacing
        pos = f"x {col}, y {row} px"
        if sp is not None:
            pos += f" ({col * sp.col_mm:.1f}, {row * sp.row_mm:.1f} {sp.label})"
        self.position_label.setText(pos)
        unit = f" {image.value_unit}" if image.value_unit else ""
        self.value_label.setText(f"stored {stored:g}, value {value:g}{unit}")

    # --- misc --------------------------------------------------------------------------
    def _update_busy(self, _busy: bool) -> None:
        busy = (self.index_runner.busy or any(r.busy for r in self.image_runners) or self.export_runner.busy
                or self.priors_runner.busy)
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(self.priors_runner.busy)
        if busy and not (self.index_runner.busy or self.export_runner.busy or self.priors_runner.busy):
            self.progress.setRange(0, 0)

    def _show_message(self, text: str) -> None:
        self.message_label.setText(text)  # not showMessage: that would hide the pixel readout
        self.last_message = text

    def set_finding_marks_visible(self, on: bool) -> None:
        """The AI's finding boxes shown or hidden in every viewport (the scores stay)."""
        self.act_marks.setChecked(on)
        for view in self.grid.views:
            view.set_finding_marks_visible(on)

    def set_overlay_visible(self, on: bool) -> None:
        self.act_overlay.setChecked(on)
        for view in self.grid.views:
            view.set_overlay_visible(on)

    def about_text(self) -> str:
        return ABOUT_TEXT.format(version=__version__, notice=RESEARCH_NOTICE)

    def show_about(self) -> None:
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.about(self, "About cxr_viewer", self.about_text())

    def _task_failed(self, title: str, message: str) -> None:
        self._show_message(f"{title}: {message}")

    def _show_help(self) -> None:
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.information(self, "Mouse and keys", (
            "Left drag: window/level (right: wider window, down: higher centre, darker), or pan in pan mode (P / W).\n"
            "Middle drag: pan.  Right drag or wheel: zoom.\n"
            "F fit, 1 one-to-one, Ctrl+2 two-to-one, R reset, I invert, A auto window, O overlay text, Shift+A anatomy,\n"
            "Shift+F AI finding marks (the box of a finding above its threshold, e.g. nodule/mass),\n"
            "2-9 presets. H / V flip, [ / ] rotate (display only), M magnifier, Ctrl+D DICOM tags.\n"
            "Compare: C compares with the prior (View > Layout: 1x1, 1x2, 2x2; click a viewport to make it active;\n"
            "Link Views moves zoom, pan and window/level together).\n"
            "PgUp/PgDown previous/next image, Left/Right previous/next frame, Esc cancel loading.\n"
            "Measure: L ruler, G angle, B rectangle ROI, E ellipse ROI, K arrow, T text (W or P leaves the tool);\n"
            "click an annotation to select it, drag it or its handles, Delete removes it, Ctrl+Z undoes;\n"
            "Ctrl+S saves the annotations as a DICOM presentation state (GSPS) beside the image.\n\n"
            + RESEARCH_NOTICE))

    def closeEvent(self, event):  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop all workers and wait for their threads (the app and test fixtures call this)."""
        for runner in self.runners:
            runner.shutdown()
        if self.pacs_dialog is not None:
            self.pacs_dialog.shutdown()


def screenshot_when_shown(window: MainWindow, path: str, then_quit: bool = True, timeout_ms: int = 60000) -> None:
    """Save a screenshot once the first image is on screen and, when a model is loaded or loading,
    scored (or the open or the model failed); then quit."""
    from PySide6.QtWidgets import QApplication

    done = []

    def grab(*_args) -> None:
        if done:
            return
        done.append(True)

        def do() -> None:
            window.grab().save(path)
            if then_quit:
                window.close()
                QApplication.quit()
        QTimer.singleShot(300, do)  # let thumbnails and the first paint land

    def on_image(_image) -> None:
        if window.models.scorer is None and not window.model_runner.busy:
            grab()

    window.image_shown.connect(on_image)
    window.scored.connect(grab)
    window.score_runner.failed.connect(grab)
    window.model_runner.failed.connect(lambda _m: grab() if window.view.image is not None else None)
    window.image_runner.failed.connect(grab)
    window.index_loaded.connect(lambda idx: None if idx.image_count else grab())
    QTimer.singleShot(timeout_ms, grab)
