"""Ground truths and metrics: exact/reference PMFs and the forward KL divergence."""
from .kld import forward_kld, pmf_to_probabilities  # noqa: F401
