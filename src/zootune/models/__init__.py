"""Small reference architectures for tests, examples and quick experiments (no weights)."""

from zootune.models.small import SmallCNN, small_cnn

__all__ = ["SmallCNN", "small_cnn"]
