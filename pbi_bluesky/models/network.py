"""The embedding network: the seed paper's 1D CNN, configurable.

Default: 4 x (Conv1d k=5 -> ReLU -> MaxPool 2) with 32, 64, 128, 128 channels, then
FC 256 -> ReLU -> FC 128, output L2-normalised (triplet distances live on the sphere).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["NetworkConfig", "EmbeddingCNN"]


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of :class:`EmbeddingCNN` (stored in the model bundle)."""

    in_channels: int = 2
    length: int = 256
    channels: tuple[int, ...] = (32, 64, 128, 128)
    kernel_size: int = 5
    hidden: int = 256
    embedding_dim: int = 128

    def to_dict(self) -> dict:
        """Return the settings as a plain dict (for model.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetworkConfig:
        """Rebuild from :meth:`to_dict` output (``channels`` back to a tuple)."""
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        return cls(**data)


class EmbeddingCNN(nn.Module):
    """1D CNN mapping (batch, in_channels, length) to unit-norm embeddings."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        layers: list[nn.Module] = []
        previous = c.in_channels
        for width in c.channels:
            layers += [
                nn.Conv1d(previous, width, c.kernel_size, padding=c.kernel_size // 2),
                nn.ReLU(),
                nn.MaxPool1d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        reduced = c.length // 2 ** len(c.channels)
        if reduced < 1:
            raise ValueError(f"input length {c.length} too short for {len(c.channels)} pools")
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * reduced, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, c.embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of curves as unit-length vectors."""
        return nn.functional.normalize(self.head(self.features(x)), dim=1)
