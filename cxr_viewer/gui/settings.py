"""One typed settings object over QSettings, with a reset."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

MAX_RECENT = 10


class Settings:
    """User settings. Tests pass ``path`` (an .ini file) to stay away from the user's own."""

    def __init__(self, path: str | None = None):
        self._custom = path is not None
        if path is None:
            self._qs = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "cxr_viewer", "cxr_viewer")
        else:
            self._qs = QSettings(path, QSettings.Format.IniFormat)

    @property
    def file_name(self) -> str:
        return self._qs.fileName()

    def recent(self) -> list[str]:
        value = self._qs.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def add_recent(self, paths: list[str]) -> None:
        items = [os.path.abspath(p) for p in paths]
        merged = items + [p for p in self.recent() if p not in items]
        self._qs.setValue("recent", merged[:MAX_RECENT])
        self._qs.sync()

    def last_folder(self) -> str:
        return str(self._qs.value("last_folder", "") or "")

    def set_last_folder(self, folder: str) -> None:
        self._qs.setValue("last_folder", folder)

    def left_mouse_mode(self) -> str:
        mode = str(self._qs.value("left_mouse_mode", "window") or "window")
        return mode if mode in ("window", "pan") else "window"

    def set_left_mouse_mode(self, mode: str) -> None:
        self._qs.setValue("left_mouse_mode", mode)

    def model_path(self) -> str:
        """A model the user loaded (empty: use the default model)."""
        return str(self._qs.value("model_path", "") or "")

    def set_model_path(self, path: str) -> None:
        self._qs.setValue("model_path", path)

    def device(self) -> str:
        value = str(self._qs.value("device", "auto") or "auto")
        return value if value in ("auto", "cpu", "cuda") else "auto"

    def set_device(self, device: str) -> None:
        self._qs.setValue("device", device)

    # PACS nodes live in a Qt-free JSON file beside the settings (the command line reads it too);
    # tests that give an .ini path get their own nodes file and cache beside it.
    def _own_folder(self) -> str | None:
        return os.path.dirname(os.path.abspath(self._qs.fileName())) if self._custom else None

    def pacs_store(self):
        from cxr_viewer.clinical.pacs_config import NodeStore

        return NodeStore(self._own_folder())

    def pacs_cache_dir(self) -> str:
        from cxr_viewer.clinical.pacs_config import cache_dir

        folder = self._own_folder()
        return os.path.join(folder, "pacs_cache") if folder else cache_dir()

    def last_pacs_node(self) -> str:
        return str(self._qs.value("last_pacs_node", "") or "")

    def set_last_pacs_node(self, name: str) -> None:
        self._qs.setValue("last_pacs_node", name)

    def export_folder(self) -> str:
        return str(self._qs.value("export_folder", "") or "")

    def set_export_folder(self, folder: str) -> None:
        self._qs.setValue("export_folder", folder)

    def deidentify_exports(self) -> bool:
        return str(self._qs.value("deidentify_exports", "false")).lower() == "true"

    def set_deidentify_exports(self, on: bool) -> None:
        self._qs.setValue("deidentify_exports", "true" if on else "false")

    def add_to_list(self) -> bool:
        """Open adds to the studies already listed (True) or replaces them (False, the default)."""
        return str(self._qs.value("open_adds_to_list", "false")).lower() == "true"

    def set_add_to_list(self, on: bool) -> None:
        self._qs.setValue("open_adds_to_list", "true" if on else "false")

    def reset(self) -> None:
        self._qs.clear()
        self._qs.sync()
