"""Generative models. Each family lives in its own module; all obey :mod:`genbench.models.base`."""
