"""The active-learning dataset, loop, and checkpoints."""
from .dataset import ActiveLearningDataset  # noqa: F401
from .loop import ActiveLearningRun  # noqa: F401
