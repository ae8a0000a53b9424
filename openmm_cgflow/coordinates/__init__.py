"""Internal coordinates: geometry helpers and the TorchScript-able Z-matrix transform."""
from .geometry import bond_angles, bond_lengths, dihedral_angles, place_atom, wrap_angle  # noqa: F401
from .zmatrix import ZMatrixTransform, zmatrix_from_bonds  # noqa: F401
