"""Windowed multimodal datasets: the generic format, HAPT, virtual streams, scenarios."""

from common.data.dataset import WindowDataset, load_dataset

__all__ = ["WindowDataset", "load_dataset"]
