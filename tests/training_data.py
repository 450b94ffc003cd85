"""Tiny Kaggle-style folders made of real Kermany images (symlinks), for fast training tests."""

from __future__ import annotations

import os
from pathlib import Path

from cxr_viewer.training.data import patient_id


def tiny_kaggle_root(shared: Path, root: Path, per_class: int = 12, with_test: bool = False) -> Path:
    """train/{NORMAL,PNEUMONIA} with ``per_class`` images each, one image per patient."""
    for cls in ("NORMAL", "PNEUMONIA"):
        src = sorted((shared / "kermany" / "train" / cls).iterdir())
        seen, chosen = set(), []
        for p in src:
            pid = patient_id(str(p))
            if pid not in seen:
                seen.add(pid)
                chosen.append(p)
            if len(chosen) == per_class + (4 if with_test else 0):
                break
        dst = root / "train" / cls
        dst.mkdir(parents=True, exist_ok=True)
        for p in chosen[:per_class]:
            os.symlink(p, dst / p.name)
        if with_test:
            tdst = root / "test" / cls
            tdst.mkdir(parents=True, exist_ok=True)
            for p in chosen[per_class:]:
                os.symlink(p, tdst / p.name)
    return root
