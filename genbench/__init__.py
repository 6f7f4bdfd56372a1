"""genbench: train and benchmark every family of deep generative model side by side."""

__version__ = "0.1.0"
