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


def make_test_nodule_model(path: Path, threshold: float = 0.05, seed: int = 0) -> Path:
    """A nodule/mass model file with RANDOM weights (seeded): NOT a trained model. It exists to
    exercise the plumbing of the lung-cancer association head (its box in the viewer, the SR's image
    region, the burnt-in box). A random net gives probabilities of about 0.3-0.6, so the low
    ``threshold`` (0.05) makes every image positive: the box is always drawn. Use it by setting
    ``CXR_VIEWER_NODULE`` to the path before ``Scorer.from_file``."""
    from cxr_viewer.ai.nodule import NoduleMeta, NoduleModel, NoduleNet

    torch.manual_seed(seed)
    meta = NoduleMeta("TEST FIXTURE nodule/mass (random weights, not trained)", "0", available=True,
                      threshold=threshold, operating_point={"sensitivity": 0.8, "specificity": 0.5},
                      note="test fixture: random weights")
    NoduleModel(NoduleNet(), meta).save(str(path))
    return path


#: a made-up SHA-256 for hand-built results (no file has it)
FAKE_SHA = "ab" * 32


def nodule_result(path: str, box=(100.0, 120.0, 300.0, 340.0), positive: bool = True, probability: float = 0.73,
                  frame: int = 0, companion: bool = True):
    """A hand-built ScoreResult (no network ran: NOT a model's output) whose lung-cancer association
    head is scored by a nodule/mass model: positive with its ``box`` (image pixels), or negative
    without one; the pneumonia head not available. For renderer and exporter tests."""
    from cxr_viewer.ai.inference import HEAD_MEANING, HeadScore, ScoreResult
    from cxr_viewer.ai.model import HEAD_TITLES

    lung = "lung_cancer_association"
    heads = (HeadScore("pneumonia", HEAD_TITLES["pneumonia"], False, reason="not available: test",
                       meaning=HEAD_MEANING["pneumonia"], status="not_available"),
             HeadScore(lung, HEAD_TITLES[lung], True, probability, positive, 0.5, 0.8, 0.5,
                       meaning=HEAD_MEANING[lung], location=tuple(box) if positive and box else None))
    return ScoreResult(path, frame, heads, {}, "TEST FIXTURE (random weights)", "0", FAKE_SHA, "cpu", 0.1, None,
                       ("TEST FIXTURE nodule/mass (random weights)", "0", "cd" * 32) if companion else None)
