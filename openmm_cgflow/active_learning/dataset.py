"""The active-learning dataset: CG points, each stored as several entries that carry flow samples (SPEC §5.2).

Each CG point is split into train or test when it is added, then copied ``copies`` times. Every
entry remembers the iteration that added it and, once visited by training by energy, the log
importance weight ln p~(x) - ln q(x | s) of its most recent sample (NaN until evaluated).

Every point also accumulates *all* the samples its entries ever received (not only the latest one per entry,
which is all the paper's labels use): a count, the ``top_k`` largest log weights (kept apart so that weight
clipping can still be applied) and the log-sum-exp of the rest. Each such sample is an unbiased importance
sample of exp(-F(s)) whatever flow parameters drew it, so labels from the accumulated samples use every
energy evaluation paid for instead of the last 1/epochs of them.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..pmf import free_energy_labels


class ActiveLearningDataset:
    """CG points x copies, with iteration tags and per-entry stored log weights.

    Parameters
    ----------
    cg_dim:
        Number of CG coordinates.
    """

    def __init__(self, cg_dim: int, top_k: int = 3):
        self.cg_dim = cg_dim
        self.top_k = max(int(top_k), 1)
        self.point_s = np.zeros((0, cg_dim))
        self.point_iteration = np.zeros(0, dtype=np.int64)
        self.point_train = np.zeros(0, dtype=bool)
        self.entry_point = np.zeros(0, dtype=np.int64)
        self.entry_log_w = np.zeros(0)
        self.entry_visits = np.zeros(0, dtype=np.int64)
        self.point_n_samples = np.zeros(0, dtype=np.int64)
        self.point_top_log_w = np.zeros((0, self.top_k))
        self.point_rest_log_w = np.zeros(0)
        self.point_rest_log_w2 = np.zeros(0)  # ln sum of w^2 below the top k (the labels' effective sample sizes)

    # ------------------------------------------------------------------ building
    def add_points(
        self, s: np.ndarray, iteration: int, rng: np.random.Generator, train_fraction: float = 0.8, copies: int = 30
    ) -> None:
        """Shuffle the CG points ``s`` (n, cg_dim), split them train/test and store ``copies`` entries of each."""
        s = np.asarray(s, dtype=np.float64).reshape(-1, self.cg_dim)
        if not np.isfinite(s).all():
            raise ValueError("CG points must be finite")
        s = s[rng.permutation(len(s))]
        n_train = int(round(train_fraction * len(s)))
        first = len(self.point_s)
        self.point_s = np.concatenate([self.point_s, s])
        self.point_iteration = np.concatenate([self.point_iteration, np.full(len(s), iteration)])
        self.point_train = np.concatenate([self.point_train, np.arange(len(s)) < n_train])
        new_points = np.repeat(np.arange(first, first + len(s)), copies)
        self.entry_point = np.concatenate([self.entry_point, new_points])
        self.entry_log_w = np.concatenate([self.entry_log_w, np.full(len(new_points), np.nan)])
        self.entry_visits = np.concatenate([self.entry_visits, np.zeros(len(new_points), dtype=np.int64)])
        self.point_n_samples = np.concatenate([self.point_n_samples, np.zeros(len(s), dtype=np.int64)])
        self.point_top_log_w = np.concatenate([self.point_top_log_w, np.full((len(s), self.top_k), -np.inf)])
        self.point_rest_log_w = np.concatenate([self.point_rest_log_w, np.full(len(s), -np.inf)])
        self.point_rest_log_w2 = np.concatenate([self.point_rest_log_w2, np.full(len(s), -np.inf)])

    @property
    def n_entries(self) -> int:
        return len(self.entry_point)

    @property
    def latest_iteration(self) -> int:
        return int(self.point_iteration.max()) if len(self.point_iteration) else -1

    def entry_s(self, entries: np.ndarray) -> np.ndarray:
        """CG coordinates (len(entries), cg_dim) of the given entries."""
        return self.point_s[self.entry_point[entries]]

    # ------------------------------------------------------------------ training schedule
    def epoch_batches(self, rng: np.random.Generator, batch_size: int, replay_fraction: float) -> List[np.ndarray]:
        """Entry indices for one epoch of training by energy, cut into full batches.

        All training entries of the newest iteration, plus a random subset of older training entries of
        size ``replay_fraction`` x (number of newest entries), capped at what exists; shuffled; the last
        partial batch is dropped.
        """
        train_entry = self.point_train[self.entry_point]
        entry_iteration = self.point_iteration[self.entry_point]
        latest = np.flatnonzero(train_entry & (entry_iteration == self.latest_iteration))
        older = np.flatnonzero(train_entry & (entry_iteration < self.latest_iteration))
        n_replay = min(int(replay_fraction * len(latest)), len(older))
        replay = rng.choice(older, size=n_replay, replace=False) if n_replay else np.zeros(0, dtype=np.int64)
        chosen = rng.permutation(np.concatenate([latest, replay]))
        n_batches = len(chosen) // batch_size
        return [chosen[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]

    def record(self, entries: np.ndarray, log_w: np.ndarray, accumulate: bool = True) -> None:
        """Store the log weights of freshly sampled entries (NaN where the sample was not evaluated) and, if
        ``accumulate``, merge them into their points' accumulated samples (the loop leaves out the samples of the
        first epochs of training by energy, drawn by a flow not yet trained by energy: their rare large weights
        would make the accumulated means converge slowly)."""
        self.entry_log_w[entries] = log_w
        self.entry_visits[entries] += 1
        if accumulate:
            self._accumulate(self.entry_point[entries], np.asarray(log_w, dtype=np.float64))

    def _accumulate(self, points: np.ndarray, log_w: np.ndarray) -> None:
        """Merge finite samples into their points' running (count, top-k, log-sum-exp of the rest and of its squares)."""
        finite = np.isfinite(log_w)
        points, log_w = points[finite], log_w[finite]
        if len(points) == 0:
            return
        order = np.argsort(points, kind="stable")
        unique, start, counts = np.unique(points[order], return_index=True, return_counts=True)
        # one row per point: its kept top-k, then its new samples (padded with -inf, which changes no sum)
        new = np.full((len(unique), counts.max()), -np.inf)
        new[np.repeat(np.arange(len(unique)), counts), np.arange(len(points)) - np.repeat(start, counts)] = log_w[order]
        candidates = -np.sort(-np.concatenate([self.point_top_log_w[unique], new], axis=1), axis=1)  # descending
        k = self.top_k
        self.point_top_log_w[unique] = candidates[:, :k]
        # everything below the top k, largest first, into the log-sum-exp of the rest (-inf terms add exactly 0)
        self.point_rest_log_w[unique] = np.logaddexp(self.point_rest_log_w[unique], np.logaddexp.reduce(candidates[:, k:], axis=1))
        with np.errstate(invalid="ignore"):  # NaN (unknown, older checkpoints) stays NaN
            self.point_rest_log_w2[unique] = np.logaddexp(self.point_rest_log_w2[unique], np.logaddexp.reduce(2 * candidates[:, k:], axis=1))
        self.point_n_samples[unique] += counts

    # ------------------------------------------------------------------ labels
    def labelled_train_entries(self) -> np.ndarray:
        """Indices of training entries that hold a finite log weight."""
        train_entry = self.point_train[self.entry_point]
        return np.flatnonzero(train_entry & np.isfinite(self.entry_log_w))

    def labels(self, samples: str, clip_k: int = 0):
        """The PMF's training labels as config ``labels`` asks: ``samples`` "all" (:meth:`accumulated_labels`) or
        "last" (each training entry's latest sample, :func:`~openmm_cgflow.pmf.free_energy_labels`), with the
        ``clip_k`` largest weights of a point clipped. Returns (point ids, labels in kT)."""
        if samples == "all":
            points, labels, _ = self.accumulated_labels(clip_k)
            return points, labels
        entries = self.labelled_train_entries()
        return free_energy_labels(self.entry_log_w[entries], self.entry_point[entries], clip_k)

    def accumulated_labels(self, clip_k: int = 0):
        """Labels F = -ln mean exp(log_w) (kT) over every sample each training point has received, with the
        ``clip_k`` largest weights of a point set to its ``clip_k``-th largest (as :func:`free_energy_labels`).
        Returns (point ids, labels, samples per point)."""
        points, top, log_sum, n = self._clipped_sums(clip_k)
        return points, -(log_sum - np.log(n)), n

    def accumulated_effective_samples(self, clip_k: int = 0):
        """Kish's effective sample size (sum w)^2 / sum w^2 of every training point's accumulated samples, with the
        clipping of :meth:`accumulated_labels`: how many samples a label is really worth (between 1 and the point's
        sample count; the label's variance is roughly 1 / ESS kT^2 when the weights are not heavy-tailed). NaN for
        points accumulated before the dataset kept squared weights (older checkpoints). Returns (point ids, ESS)."""
        points, top, log_sum, _ = self._clipped_sums(clip_k)
        with np.errstate(invalid="ignore"):  # NaN (unknown) sums of squares stay NaN without a warning
            log_sum2 = np.logaddexp(np.logaddexp.reduce(2 * top, axis=1), self.point_rest_log_w2[points])
        return points, np.exp(2 * log_sum - log_sum2)

    def _clipped_sums(self, clip_k: int):
        """(training points with samples, their top-k log weights with the ``clip_k`` largest clipped, ln sum w of
        all their (clipped) samples, sample counts)."""
        if clip_k > self.top_k:
            raise ValueError(f"clip_k={clip_k} needs the dataset to keep the top {clip_k} weights, it keeps {self.top_k}")
        points = np.flatnonzero(self.point_train & (self.point_n_samples > 0))
        top = self.point_top_log_w[points].copy()
        n = self.point_n_samples[points]
        if clip_k > 1:
            kth = top[:, clip_k - 1 : clip_k]
            clipped = n >= clip_k
            top[clipped, :clip_k] = np.minimum(top[clipped, :clip_k], kth[clipped])
        log_sum = np.logaddexp(np.logaddexp.reduce(top, axis=1), self.point_rest_log_w[points])
        return points, top, log_sum, n

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> Dict[str, np.ndarray]:
        return {
            "cg_dim": self.cg_dim,
            "point_s": self.point_s,
            "point_iteration": self.point_iteration,
            "point_train": self.point_train,
            "entry_point": self.entry_point,
            "entry_log_w": self.entry_log_w,
            "entry_visits": self.entry_visits,
            "top_k": self.top_k,
            "point_n_samples": self.point_n_samples,
            "point_top_log_w": self.point_top_log_w,
            "point_rest_log_w": self.point_rest_log_w,
            "point_rest_log_w2": self.point_rest_log_w2,
        }

    @classmethod
    def from_state_dict(cls, state: Dict[str, np.ndarray]) -> "ActiveLearningDataset":
        dataset = cls(int(state["cg_dim"]), int(state.get("top_k", 3)))
        for key in ("point_s", "point_iteration", "point_train", "entry_point", "entry_log_w", "entry_visits"):
            setattr(dataset, key, np.asarray(state[key]).copy())
        n = len(dataset.point_s)
        if "point_n_samples" in state:  # checkpoints before accumulation start with empty accumulators
            for key in ("point_n_samples", "point_top_log_w", "point_rest_log_w"):
                setattr(dataset, key, np.asarray(state[key]).copy())
        else:
            dataset.point_n_samples = np.zeros(n, dtype=np.int64)
            dataset.point_top_log_w = np.full((n, dataset.top_k), -np.inf)
            dataset.point_rest_log_w = np.full(n, -np.inf)
        # squared weights were not kept before; NaN (unknown) where a point already has samples
        dataset.point_rest_log_w2 = (np.asarray(state["point_rest_log_w2"]).copy() if "point_rest_log_w2" in state
                                     else np.where(dataset.point_n_samples > 0, np.nan, -np.inf))
        return dataset
