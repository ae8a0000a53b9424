"""Conditional normalizing flows q(x_fg | s) (TorchScript-able) and their training."""
from .base import gaussian_log_prob, sample  # noqa: F401
from .affine import ConditionalAffineFlow  # noqa: F401
from .spline_flow import ConditionalSplineFlow  # noqa: F401
