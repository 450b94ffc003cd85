"""The thin Qt layer: widgets, dialogs and workers that run the Qt-free parts' tasks off the GUI thread.

May import every part except ``cli``; the only package that imports Qt at module level.
"""
