"""The CNN: three conv blocks (conv + batch norm + ReLU) and a two-layer classifier.

Sizes are derived from `ModelConfig`, which is saved in every checkpoint so later stages
rebuild the same network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    channels: tuple[int, int, int] = (32, 64, 64)
    hidden: int = 128
    conv_dropout: float = 0.0
    head_dropout: float = 0.2


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # bias=False: batch norm's shift makes a conv bias redundant
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FashionCNN(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.features = nn.Sequential(
            conv_block(config.in_channels, c1),  # (B, c1, 28, 28)
            nn.MaxPool2d(2),  # (B, c1, 14, 14)
            conv_block(c1, c2),
            conv_block(c2, c3),
            nn.MaxPool2d(2),  # (B, c3, 7, 7)
            nn.Dropout(config.conv_dropout),
        )
        pooled_size = config.image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * pooled_size * pooled_size, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.head_dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images (B, C, H, W) -> logits (B, num_classes)."""
        return self.classifier(self.features(x))


def parameter_summary(model: nn.Module) -> str:
    """One line per layer with parameters, then the total."""
    rows = [
        (name, type(module).__name__, sum(p.numel() for p in module.parameters(recurse=False)))
        for name, module in model.named_modules()
    ]
    rows = [row for row in rows if row[2]]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{name:<{width}}  {kind:<12} {count:>9,}" for name, kind, count in rows]
    lines.append(f"{'total':<{width}}  {'':<12} {sum(c for _, _, c in rows):>9,}")
    return "\n".join(lines)
