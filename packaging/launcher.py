"""Entry point of the frozen app (PyInstaller): the same command line as ``cxr-viewer``."""

import multiprocessing

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from cxr_viewer.cli import main

    raise SystemExit(main())
