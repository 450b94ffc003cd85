"""Entry point of the frozen app (PyInstaller): the same command line as ``cxr-viewer``.

``--cxr-decode-worker`` starts the decoder child instead (``cxr_viewer.io.codecs.child_command``):
in the frozen app there is no interpreter to run ``-c``, so the app itself is started again.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    if sys.argv[1:2] == ["--cxr-decode-worker"]:
        from cxr_viewer.io.codecs import child_main

        child_main()
        raise SystemExit(0)
    from cxr_viewer.cli import main

    raise SystemExit(main())
