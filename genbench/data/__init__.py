"""Datasets. Every dataset is a :class:`Data` record of integer levels ``[N, C, H, W]``."""

from genbench.data.base import Batches, Data

__all__ = ["Batches", "Data"]
