"""Training and measuring models: datasets and splits (``data``), the training engine (``engine``),
metrics and calibration (``metrics``), evaluation (``evaluation``), the source paper's grid
(``experiments``) and fitting heads on a frozen backbone (``heads``).

May import: ``ai``, ``io``, ``common``. Not ``clinical``, never Qt.
"""
