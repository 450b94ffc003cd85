"""The model: the network and model files (``model``: safetensors + JSON sidecar with SHA-256),
the one preprocessing function shared by training, evaluation and inference (``preprocess``),
scoring with Grad-CAM heatmaps (``inference``), the default model and model switching
(``model_store``), and how a score and heatmap are drawn on an image (``overlay``).

May import: ``io``, ``common``. Never Qt.
"""
