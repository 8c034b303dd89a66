"""The one look at a test set after training: plain accuracy, and flip-TTA accuracy reported beside it.

Always in float32, whatever the training's autocast: the files that ship (best_model.pt, the ONNX exports)
are float32, so the accuracy reported for them, and deploy's reference for the ONNX files, must be theirs
(under bf16 autocast the same weights score a few tenths differently).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .data import ImageData
from .engine import predict_images, tta_accuracy

__all__ = ["TestScores", "score_test_set"]


@dataclass(frozen=True)
class TestScores:
    labels: torch.Tensor  # in data order, on the CPU
    pred: torch.Tensor  # predicted classes (plain, not TTA)
    loss: float  # mean cross-entropy
    acc: float  # plain accuracy: the figure reported
    acc_tta: float  # flip-TTA accuracy, reported beside acc, never instead of it


def score_test_set(model: nn.Module, data: ImageData, device: torch.device | str) -> TestScores:
    logits, labels, loss = predict_images(model, data.x_test, data.y_test, data.mean, data.std, device, amp=False)
    flipped, _, _ = predict_images(model, data.x_test, data.y_test, data.mean, data.std, device, amp=False,
                                   flip=True)
    pred = logits.argmax(1)
    return TestScores(labels, pred, loss, float((pred == labels).float().mean()), tta_accuracy(logits, flipped, labels))
