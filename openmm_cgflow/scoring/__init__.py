"""How a PMF is scored: grids over CG space, reference files on them, histograms of samples, and the forward KL
divergence (SPEC §9.1). Plain numpy; below the CG systems, whose built-in references are files in this format."""
from .kld import forward_kld, pmf_to_probabilities  # noqa: F401
