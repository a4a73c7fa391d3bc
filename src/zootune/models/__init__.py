"""Small reference architectures for tests, examples and quick experiments (no weights).

Plain ``nn.Module`` builders (torch only); must never import any other zootune package.
"""

from zootune.models.small import SmallCNN, small_cnn

__all__ = ["SmallCNN", "small_cnn"]
