"""Free-energy labels from flow samples and the PMF ensemble fitted to them."""
from .labels import free_energy_labels, merge_in_cells  # noqa: F401
from .ensemble import PMFEnsemble  # noqa: F401
