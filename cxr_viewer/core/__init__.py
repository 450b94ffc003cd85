"""Qt-free core: study indexing, image decoding and the display pipeline.

Nothing under ``cxr_viewer.core`` imports Qt; ``tests/test_core_without_qt.py`` checks that.
"""
