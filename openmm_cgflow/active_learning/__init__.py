"""The active-learning run: typed settings, the dataset, the stages of an iteration, the driver, its checkpoints and
outputs."""
from .dataset import ActiveLearningDataset  # noqa: F401
from .loop import ActiveLearningRun  # noqa: F401
from .settings import RunSettings  # noqa: F401
from .stages import StageTiming  # noqa: F401
