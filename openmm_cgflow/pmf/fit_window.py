"""A run's PMF as the average of its latest ensemble fits (``ensemble.average_fraction``).

Late in an active-learning run each refit of the ensemble scatters about the PMF its labels define: on alanine
dipeptide the forward KLD of consecutive iterations moves between 1.1e-3 and 1.4e-3 while the labels barely change.
Averaging the fits of the last iterations cancels that scatter (iterate averaging) and keeps the labels' bias. The
window is a fraction of the run's energy evaluations, not a count of iterations, so that it means the same for any
iteration size: with ``fraction`` f the PMF is the mean over every fit made at >= (1 - f) x the latest fit's
evaluations (always at least the latest fit; f = 0 is the latest fit alone, the paper).

The averaged PMF is the stacked ensemble of those fits (:meth:`PMFEnsemble.stack`): its mean is the mean of the
fits' means (kT) and its std the std over all their members, i.e. the scatter within a fit and between the fits.
On the scoring grid both come in closed form from each fit's own grid mean and std, so a long window costs no extra
network evaluations; the stacked model itself is built only to be exported.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from .ensemble import PMFEnsemble


def in_window(energy_evaluations: Sequence[int], fraction: float) -> np.ndarray:
    """Which of a run's fits (made at ``energy_evaluations``, in order, the last the latest) its PMF averages: those
    made at >= (1 - ``fraction``) x the latest one's evaluations, and always the latest."""
    evaluations = np.asarray(energy_evaluations, dtype=np.float64)
    mask = evaluations >= (1.0 - fraction) * evaluations[-1]
    mask[-1] = True
    return mask


@dataclass
class StoredFit:
    """One fit in the window: the run's energy evaluations when it was made, its members (a state dict), their
    number, and its mean and std (kT) on the scoring grid."""

    energy_evaluations: int
    members: Dict[str, torch.Tensor]
    n_members: int
    grid_mean: np.ndarray
    grid_std: np.ndarray


class FitWindow:
    """The fits a run's PMF averages: those made at >= (1 - ``fraction``) x the latest fit's energy evaluations."""

    def __init__(self, fraction: float = 0.0):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"the averaging fraction must be in [0, 1), got {fraction}")
        self.fraction = float(fraction)
        self.fits: List[StoredFit] = []

    def add(self, energy_evaluations: int, ensemble: PMFEnsemble, grid_mean: np.ndarray, grid_std: np.ndarray) -> None:
        """Add the latest fit (a copy of ``ensemble``'s members, made after ``energy_evaluations`` evaluations, with
        its grid mean and std in kT) and drop the fits that fall out of the window."""
        members = {key: value.detach().clone() for key, value in ensemble.state_dict().items()}
        self.fits.append(StoredFit(int(energy_evaluations), members, ensemble.n_members,
                                   np.asarray(grid_mean, dtype=np.float64).copy(), np.asarray(grid_std, dtype=np.float64).copy()))
        keep = in_window([fit.energy_evaluations for fit in self.fits], self.fraction)
        self.fits = [fit for fit, kept in zip(self.fits, keep) if kept]

    def grid_mean_std(self) -> Tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased std (kT) on the scoring grid over every member of the window's fits (what the stacked
        ensemble would predict), from each fit's own mean and std."""
        if not self.fits:
            raise ValueError("the window holds no fit yet")
        if len(self.fits) == 1:
            return self.fits[0].grid_mean.copy(), self.fits[0].grid_std.copy()
        n = np.array([fit.n_members for fit in self.fits], dtype=np.float64)[:, None]
        means = np.stack([fit.grid_mean for fit in self.fits])
        stds = np.stack([fit.grid_std for fit in self.fits])
        total = n.sum()
        mean = (n * means).sum(0) / total
        # sum of squared deviations from the pooled mean: within each fit, plus each fit's mean from the pooled one
        squares = ((n - 1) * stds ** 2 + n * (means - mean) ** 2).sum(0)
        return mean, np.sqrt(squares / (total - 1))

    def ensemble(self, template: PMFEnsemble) -> PMFEnsemble:
        """The stacked ensemble of the window's fits (``template``: an ensemble of the run's architecture whose
        members are loaded with each fit's in turn; it is not changed). The latest fit alone is returned as a copy;
        an empty window (no fit yet, or a checkpoint written before windows existed) returns ``template`` itself."""
        if not self.fits:
            return template
        loaded = []
        for fit in self.fits:
            member = copy.deepcopy(template)
            member.load_state_dict(fit.members)
            loaded.append(member)
        return loaded[0] if len(loaded) == 1 else PMFEnsemble.stack(loaded)

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and plain data for a checkpoint (the fraction is the run's setting, stored with its config)."""
        return {"fits": [
            {"energy_evaluations": fit.energy_evaluations, "members": fit.members, "n_members": fit.n_members,
             "grid_mean": torch.as_tensor(fit.grid_mean), "grid_std": torch.as_tensor(fit.grid_std)} for fit in self.fits]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.fits = [StoredFit(int(f["energy_evaluations"]), dict(f["members"]), int(f["n_members"]),
                               np.asarray(f["grid_mean"], dtype=np.float64), np.asarray(f["grid_std"], dtype=np.float64))
                     for f in state["fits"]]
