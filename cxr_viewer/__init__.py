"""cxr_viewer: a desktop chest X-ray viewer with research-use AI scoring.

``cxr_viewer.core`` is Qt-free (study I/O, image pipeline); ``cxr_viewer.gui`` is the thin Qt
layer. Research use only. Not for diagnostic use.
"""

__version__ = "0.1.0"

RESEARCH_NOTICE = "Research use only. Not for diagnostic use."
