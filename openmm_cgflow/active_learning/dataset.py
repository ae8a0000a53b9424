"""The active-learning dataset: CG points, each stored as several entries that carry flow samples (SPEC §5.2).

Each CG point is split into train or test when it is added, then copied ``copies`` times. Every
entry remembers the iteration that added it and, once visited by training by energy, the log
importance weight ln p~(x) - ln q(x | s) of its most recent sample (NaN until evaluated).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np


class ActiveLearningDataset:
    """CG points x copies, with iteration tags and per-entry stored log weights.

    Parameters
    ----------
    cg_dim:
        Number of CG coordinates.
    """

    def __init__(self, cg_dim: int):
        self.cg_dim = cg_dim
        self.point_s = np.zeros((0, cg_dim))
        self.point_iteration = np.zeros(0, dtype=np.int64)
        self.point_train = np.zeros(0, dtype=bool)
        self.entry_point = np.zeros(0, dtype=np.int64)
        self.entry_log_w = np.zeros(0)
        self.entry_visits = np.zeros(0, dtype=np.int64)

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

    def record(self, entries: np.ndarray, log_w: np.ndarray) -> None:
        """Store the log weights of freshly sampled entries (NaN where the sample was not evaluated)."""
        self.entry_log_w[entries] = log_w
        self.entry_visits[entries] += 1

    # ------------------------------------------------------------------ labels
    def labelled_train_entries(self) -> np.ndarray:
        """Indices of training entries that hold a finite log weight."""
        train_entry = self.point_train[self.entry_point]
        return np.flatnonzero(train_entry & np.isfinite(self.entry_log_w))

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
        }

    @classmethod
    def from_state_dict(cls, state: Dict[str, np.ndarray]) -> "ActiveLearningDataset":
        dataset = cls(int(state["cg_dim"]))
        for key in ("point_s", "point_iteration", "point_train", "entry_point", "entry_log_w", "entry_visits"):
            setattr(dataset, key, np.asarray(state[key]).copy())
        return dataset
