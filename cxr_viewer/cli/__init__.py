"""Command line: one module per command group, all under ``entry.main``.

Owns: argument parsing, exit codes, one-line messages on stderr, the self-test. May import every
part below it (common, io, ai, training, clinical) and, lazily, ``gui`` (to open the window and to
write the PDF report with Qt's PDF writer). Nothing below imports ``cli``.

- ``entry``: ``cxr-viewer`` itself (GUI without a subcommand, else dispatch)
- ``common``: exit codes, progress bar, loading the model with a one-line error
- ``images``: ``info``, ``render``      - ``scoring``: ``predict``
- ``training``: ``train``, ``evaluate``, ``experiment``
- ``clinical``: ``export``, ``pacs``      - ``selftest``: ``--self-test``
"""

from cxr_viewer.cli.entry import main

__all__ = ["main"]
