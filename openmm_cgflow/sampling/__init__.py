"""Sampling in CG space: Metropolis MC with the uncertainty stop, and the acquisition of new points."""
from .monte_carlo import metropolis, uncertainty_search, uncertainty_weighted_search, wrap_angle, UncertaintySearchResult  # noqa: F401
from .acquisition import farthest_point_selection, spread_disc, spread_uniform_interval  # noqa: F401
