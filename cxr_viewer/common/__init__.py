"""Plain helpers every part uses: cancellable task generators and their progress (``tasks``), the
one-line user-facing errors (``errors``), atomic file writes (``fileio``).

May import: the standard library and ``cxr_viewer`` (version, notice) only.
"""
