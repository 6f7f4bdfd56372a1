"""genbench.eval."""
