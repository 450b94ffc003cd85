"""Where PACS nodes and the retrieve cache live (Qt-free, shared by the GUI and the command line).

Nodes are a small JSON file written atomically; passwords are never in it (they go to the OS
keyring, see :func:`cxr_viewer.clinical.pacs.set_password`). ``CXR_VIEWER_CONFIG_DIR`` and
``CXR_VIEWER_CACHE_DIR`` move both (tests use them to stay away from the user's own).
"""

from __future__ import annotations

import json
import os
import sys

from cxr_viewer.clinical.pacs import PacsNode
from cxr_viewer.common.fileio import write_bytes_atomic

NODES_FILE = "pacs_nodes.json"


def config_dir() -> str:
    env = os.environ.get("CXR_VIEWER_CONFIG_DIR")
    if env:
        return env
    if sys.platform == "win32":
        return os.path.join(os.environ.get("APPDATA", os.path.expanduser("~")), "cxr_viewer")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Application Support/cxr_viewer")
    return os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "cxr_viewer")


def cache_dir() -> str:
    """Where retrieved studies go (one folder per Study Instance UID)."""
    env = os.environ.get("CXR_VIEWER_CACHE_DIR")
    if env:
        return env
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA", os.path.expanduser("~"))
        return os.path.join(base, "cxr_viewer", "pacs_cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/cxr_viewer/pacs")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cxr_viewer", "pacs")


class NodeStore:
    """The configured PACS nodes, in ``<folder>/pacs_nodes.json``."""

    def __init__(self, folder: str | None = None):
        self.path = os.path.join(folder or config_dir(), NODES_FILE)

    def load(self) -> list[PacsNode]:
        """The nodes; a missing file is no nodes, a damaged one a ValueError saying where."""
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read PACS nodes from {self.path}: {exc}") from None
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        if not isinstance(nodes, list):
            raise ValueError(f"cannot read PACS nodes from {self.path}: no 'nodes' list")
        return [PacsNode.from_dict(d) for d in nodes]

    def save(self, nodes: list[PacsNode]) -> None:
        names = [n.name for n in nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names must be unique: {', '.join(dupes)}")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        data = json.dumps({"nodes": [n.to_dict() for n in nodes]}, indent=2).encode("utf-8")
        write_bytes_atomic(self.path, data)

    def get(self, name: str) -> PacsNode:
        for node in self.load():
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.load()) or "none configured"
        raise KeyError(f"no PACS node named {name!r} (known: {known}; nodes file {self.path})")


def cache_usage(folder: str) -> tuple[int, int]:
    """(files, bytes) held in the retrieve cache: patient data on this disk until cleared."""
    files = size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def clear_cache(folder: str) -> int:
    """Delete the retrieved studies (one folder per Study UID) and the results outbox; returns the
    number of files removed. Only what this program writes there is touched: ``*.dcm`` files and
    the folders they leave empty."""
    removed = 0
    if not os.path.isdir(folder):
        return 0
    for root, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            if name.endswith(".dcm") or name.startswith(".tmp-"):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except OSError:
                    pass
        if root != folder:
            try:
                os.rmdir(root)  # only when empty
            except OSError:
                pass
    return removed
