"""Model files for tests of the model-file format and the scoring plumbing.

These models have RANDOM weights (seeded): they exist to exercise loading, verification, device
handling, heatmaps and the GUI wiring, never to judge scores. Tests of what a trained model says
use the shipped default model (models/default.safetensors) and skip, saying so, when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxr_viewer.ai.model import CxrNet, HeadInfo, ModelMeta, save_model
from cxr_viewer.ai.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default.safetensors"


def make_test_model(path: Path, trained: tuple[str, ...] = ("pneumonia",), input_size: int = 64,
                    seed: int = 0, dtype=torch.float16) -> Path:
    torch.manual_seed(seed)
    model = CxrNet()
    meta = ModelMeta(name="TEST FIXTURE (random weights)", version="0",
                     preprocessing=PreprocessSpec(input_size=input_size))
    for head in meta.heads:
        meta.heads[head] = HeadInfo(trained=head in trained, threshold=0.5, temperature=1.0,
                                    operating_point={"sensitivity": 0.9, "specificity": 0.8} if head in trained else {})
    save_model(model, meta, str(path), dtype=dtype)
    return path
