"""Windowed multimodal datasets: the generic format, HAPT, virtual streams, scenarios."""

from common.data.dataset import WindowDataset
from common.data.loading import load_dataset

__all__ = ["WindowDataset", "load_dataset"]
