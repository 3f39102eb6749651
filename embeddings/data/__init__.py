"""Data: the contract, loaders, the synthetic world, the split and the lst features."""

from embeddings.data.dataset import Dataset, load_data

__all__ = ["Dataset", "load_data"]
