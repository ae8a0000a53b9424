"""Bond lengths, angles and dihedrals of batched coordinates (torch, TorchScript-able), IUPAC convention.

The dihedral of (p0, p1, p2, p3) is the angle in (-pi, pi] between the planes (p0, p1, p2) and
(p1, p2, p3), positive for a clockwise rotation of the front bond looking along p1 -> p2 (IUPAC; the
same sign as ``mdtraj.compute_dihedrals``).
"""
import numpy as np
import torch


def bond_lengths(p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    """|p1 - p0| over the last axis (nm)."""
    return torch.linalg.norm(p1 - p0, dim=-1)


def bond_angles(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Angle p0-p1-p2 in radians, in [0, pi]."""
    u = p0 - p1
    v = p2 - p1
    cross = torch.linalg.norm(torch.linalg.cross(u, v, dim=-1), dim=-1)
    return torch.atan2(cross, (u * v).sum(-1))


def dihedral_angles(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """IUPAC dihedral p0-p1-p2-p3 in radians, in (-pi, pi]."""
    b0 = p1 - p0
    b1 = p2 - p1
    b2 = p3 - p2
    n0 = torch.linalg.cross(b0, b1, dim=-1)
    n1 = torch.linalg.cross(b1, b2, dim=-1)
    m = torch.linalg.cross(b1 / torch.linalg.norm(b1, dim=-1, keepdim=True), n0, dim=-1)
    return torch.atan2((m * n1).sum(-1), (n0 * n1).sum(-1))


def frame_dihedrals(frames, dihedrals) -> np.ndarray:
    """IUPAC dihedrals (B, len(dihedrals)) in rad of frames (B, n_atoms, 3) nm, one per atom quadruple (numpy in,
    numpy out)."""
    x = torch.as_tensor(np.asarray(frames, dtype=np.float64))
    return torch.stack([dihedral_angles(*(x[:, i] for i in atoms)) for atoms in dihedrals], dim=-1).numpy()


def place_atom(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, r: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Position x with |x - a| = r, angle(x, a, b) = theta and IUPAC dihedral(x, a, b, c) = phi (NeRF).

    a, b, c: (B, 3); r, theta, phi: (B,).
    """
    ab = b - a
    ab = ab / torch.linalg.norm(ab, dim=-1, keepdim=True)
    n = torch.linalg.cross(ab, c - b, dim=-1)
    n = n / torch.linalg.norm(n, dim=-1, keepdim=True)
    m = torch.linalg.cross(n, ab, dim=-1)
    along = r * torch.cos(theta)
    perp = r * torch.sin(theta)
    return a + along[:, None] * ab + (perp * torch.cos(phi))[:, None] * m - (perp * torch.sin(phi))[:, None] * n


def periodic_difference(a, b=0.0) -> np.ndarray:
    """Numpy: a - b for angles (rad), wrapped into [-pi, pi); with b = 0 it wraps a."""
    return np.remainder(np.asarray(a, dtype=np.float64) - b + np.pi, 2 * np.pi) - np.pi


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles (rad) into [-pi, pi)."""
    return torch.remainder(x + 3.141592653589793, 6.283185307179586) - 3.141592653589793
