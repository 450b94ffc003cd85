#!/usr/bin/env bash
# Build the Linux onedir bundle and its .tar.gz:  bash packaging/build_linux.sh [PYTHON]
# PYTHON defaults to .venv/bin/python (pyinstaller is installed into it if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
"$PY" -m PyInstaller --version >/dev/null 2>&1 || "$PY" -m pip install -q "pyinstaller>=6.10"
"$PY" -m PyInstaller --noconfirm --distpath build/dist --workpath build/work packaging/cxr_viewer.spec
DIST=build/dist/cxr-viewer
mkdir -p "$DIST/share/applications" "$DIST/share/icons/hicolor/256x256/apps"
cp packaging/cxr-viewer.desktop "$DIST/share/applications/"
cp resources/icons/cxr_viewer.png "$DIST/share/icons/hicolor/256x256/apps/cxr_viewer.png"
VERSION=$("$PY" -c "import cxr_viewer; print(cxr_viewer.__version__)")
TAR=build/cxr-viewer-$VERSION-linux-$(uname -m).tar.gz
tar -C build/dist -cf - cxr-viewer | gzip -1 > "$TAR"
du -sh "$DIST" "$TAR"
