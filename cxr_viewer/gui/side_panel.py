"""Right-hand panel: display controls (VOI presets, window, invert, frame) and metadata."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.io.display import Voi, Window
from cxr_viewer.io.image import LoadedImage


class DisplayControls(QGroupBox):
    preset_chosen = Signal(object)  # Voi
    window_edited = Signal(object)  # Window
    invert_toggled = Signal(bool)
    frame_chosen = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Display", parent)
        self.preset = QComboBox(self)
        self.preset.setToolTip("Window presets from the DICOM header (with their explanations), auto and full range")
        self.center = QDoubleSpinBox(self)
        self.width_ = QDoubleSpinBox(self)
        for box in (self.center, self.width_):
            box.setRange(-1e9, 1e9)
            box.setDecimals(1)
            box.setKeyboardTracking(False)
        self.width_.setMinimum(1e-3)
        self.invert = QCheckBox("Invert (I)", self)
        self.frame = QSpinBox(self)
        self.frame.setMinimum(1)
        form = QFormLayout(self)
        form.addRow("Preset", self.preset)
        form.addRow("Centre", self.center)
        form.addRow("Width", self.width_)
        form.addRow("", self.invert)
        form.addRow("Frame", self.frame)
        self._presets: list[Voi] = []
        self._updating = False
        self.preset.activated.connect(self._on_preset)
        self.center.valueChanged.connect(self._on_spin)
        self.width_.valueChanged.connect(self._on_spin)
        self.invert.toggled.connect(lambda on: None if self._updating else self.invert_toggled.emit(on))
        self.frame.valueChanged.connect(lambda v: None if self._updating else self.frame_chosen.emit(v - 1))
        self._function = "LINEAR"
        self.set_image(None)

    def set_image(self, image: LoadedImage | None) -> None:
        self._updating = True
        self.preset.clear()
        self._presets = image.presets() if image is not None else []
        for voi in self._presets:
            self.preset.addItem(voi.describe())
        frames = image.ref.frames if image is not None else 1
        self.frame.setMaximum(max(1, frames))
        self.frame.setValue((image.frame if image is not None else 0) + 1)
        self.frame.setEnabled(frames > 1)
        self.setEnabled(image is not None)
        self._updating = False

    def show_voi(self, voi: Voi, user_invert: bool) -> None:
        self._updating = True
        is_window = isinstance(voi, Window)
        self.center.setEnabled(is_window)
        self.width_.setEnabled(is_window)
        if is_window:
            self._function = voi.function
            self.center.setValue(voi.center)
            self.width_.setValue(voi.width)
        index = next((i for i, p in enumerate(self._presets) if p is voi or (
            isinstance(p, Window) and is_window and (p.center, p.width, p.function) == (voi.center, voi.width, voi.function))), -1)
        # a window of no preset (dragged, typed): the box says so instead of going blank
        self.preset.setPlaceholderText("Custom" if is_window else voi.describe())
        self.preset.setCurrentIndex(index)
        self.invert.setChecked(user_invert)
        self._updating = False

    def presets(self) -> list[Voi]:
        return list(self._presets)

    def _on_preset(self, index: int) -> None:
        if 0 <= index < len(self._presets):
            self.preset_chosen.emit(self._presets[index])

    def _on_spin(self, _value: float) -> None:
        if not self._updating:
            self.window_edited.emit(Window(self.center.value(), self.width_.value(), self._function, "Custom"))


class MetadataPanel(QTableWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(["Attribute", "Value"])
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setStretchLastSection(True)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setWordWrap(True)

    def set_image(self, image: LoadedImage | None) -> None:
        items = image.ref.meta.display_items() if image is not None else []
        if image is not None:
            items.append(("File", image.ref.path))
            if image.value_unit:
                items.append(("Value unit", image.value_unit))
        self.setRowCount(len(items))
        for row, (key, value) in enumerate(items):
            k = QTableWidgetItem(key)
            v = QTableWidgetItem(value or "-")
            v.setToolTip(value)
            self.setItem(row, 0, k)
            self.setItem(row, 1, v)

    def value_of(self, key: str) -> str | None:
        for row in range(self.rowCount()):
            if self.item(row, 0).text() == key:
                return self.item(row, 1).text()
        return None


class SidePanel(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.controls = DisplayControls(self)
        self.metadata = MetadataPanel(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.controls)
        layout.addWidget(self.metadata, 1)
        self.setMinimumWidth(180)
        self.metadata.setTextElideMode(Qt.TextElideMode.ElideMiddle)
