"""Declarative CG coordinates: what a CG coordinate is, written as data that model files carry.

A :class:`CGDefinition` lists the CG coordinates of a molecule (dihedrals of atom quadruples, or a linear
combination of one particle's Cartesian coordinates) and describes the *CG replica* used for CG dynamics on a
learned PMF: the few particles the CG coordinates need, with the restraints that keep them a molecule. Its
:meth:`~CGDefinition.to_dict` is plain JSON, stored in every exported model, so OpenMM forces, CG dynamics and
backmapping rebuild the CG map from the file alone (no system registry, no system names).

Conventions: dihedrals are IUPAC (mdtraj's sign), and a dihedral CG coordinate is
``s = wrap(sign * dihedral - offset)`` in rad on [-pi, pi); ``sign = -1`` with an offset is the paper's
alanine-dipeptide frame, ``sign = +1, offset = 0`` the IUPAC angle itself. Linear coordinates are in nm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import openmm

from ..coordinates.geometry import periodic_difference

#: Force constants of the CG replica (OpenMM's harmonic convention k/2 (x - x0)^2): Amber-like, so a 2 fs
#: Langevin step is stable; they do not change the CG marginal (see forces/cg_dynamics.py).
REPLICA_BOND_K = 2.0e5   # kJ/mol/nm^2
REPLICA_ANGLE_K = 400.0  # kJ/mol/rad^2


@dataclass(frozen=True)
class DihedralCV:
    """``s = wrap(sign * dihedral(atoms) - offset)`` in rad (IUPAC dihedral, atoms 0-based)."""

    name: str
    atoms: Tuple[int, int, int, int]
    sign: float = 1.0
    offset: float = 0.0

    kind = "dihedral"
    periodic = True
    unit = "rad"

    def __post_init__(self):
        atoms = tuple(int(a) for a in self.atoms)
        if len(atoms) != 4 or len(set(atoms)) != 4:
            raise ValueError(f"CG dihedral '{self.name}' needs four different atoms, got {list(self.atoms)}")
        if self.sign not in (1.0, -1.0):
            raise ValueError(f"CG dihedral '{self.name}': sign must be +1 or -1, got {self.sign}")
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "sign", float(self.sign))
        object.__setattr__(self, "offset", float(self.offset))

    @property
    def domain(self) -> Tuple[float, float]:
        return (-math.pi, math.pi)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "atoms": list(self.atoms), "sign": self.sign, "offset": self.offset}

    def energy_expression(self) -> str:
        """s as a CustomTorsionForce expression of OpenMM's torsion angle ``theta`` (IUPAC)."""
        return f"d - 2*pi*floor((d + pi) / (2*pi)); d = ({self.sign!r})*theta - ({self.offset!r}); pi = {math.pi!r}"

    def variable_force(self) -> openmm.Force:
        force = openmm.CustomTorsionForce(self.energy_expression())
        force.addTorsion(*self.atoms, [])
        return force

    def restraint_force(self, k_kJ_per_mol: float, parameter: str) -> openmm.Force:
        """0.5 k wrap(s - target)^2 with the target a global parameter ``parameter`` (rad, this CV's frame)."""
        force = openmm.CustomTorsionForce(
            f"0.5*k_{parameter}*dd^2; dd = e - 2*pi*floor((e + pi) / (2*pi)); e = ({self.sign!r})*theta - ({self.offset!r}) - {parameter}; "
            f"pi = {math.pi!r}"
        )
        force.addGlobalParameter(parameter, 0.0)
        force.addGlobalParameter(f"k_{parameter}", float(k_kJ_per_mol))
        force.addTorsion(*self.atoms, [])
        return force


@dataclass(frozen=True)
class LinearCV:
    """``s = c . r_particle`` (nm): a linear combination of one particle's Cartesian coordinates."""

    name: str
    particle: int
    coefficients: Tuple[float, float, float]
    domain: Tuple[float, float]

    kind = "linear"
    periodic = False
    unit = "nm"

    def __post_init__(self):
        c = tuple(float(v) for v in self.coefficients)
        if len(c) != 3 or not any(c):
            raise ValueError(f"linear CG coordinate '{self.name}' needs three coefficients, not all zero, got {self.coefficients}")
        lo, hi = (float(v) for v in self.domain)
        if not lo < hi:
            raise ValueError(f"linear CG coordinate '{self.name}': domain must be (lower, upper), got {self.domain}")
        object.__setattr__(self, "coefficients", c)
        object.__setattr__(self, "domain", (lo, hi))
        object.__setattr__(self, "particle", int(self.particle))

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "particle": self.particle, "coefficients": list(self.coefficients),
                "domain": list(self.domain)}

    def energy_expression(self) -> str:
        cx, cy, cz = self.coefficients
        return f"({cx!r})*x + ({cy!r})*y + ({cz!r})*z"

    def variable_force(self) -> openmm.Force:
        force = openmm.CustomExternalForce(self.energy_expression())
        force.addParticle(self.particle, [])
        return force

    def restraint_force(self, k_kJ_per_mol: float, parameter: str) -> openmm.Force:
        force = openmm.CustomExternalForce(f"0.5*k_{parameter}*({self.energy_expression()} - {parameter})^2")
        force.addGlobalParameter(parameter, 0.0)
        force.addGlobalParameter(f"k_{parameter}", float(k_kJ_per_mol))
        force.addParticle(self.particle, [])
        return force


CV = Union[DihedralCV, LinearCV]


@dataclass(frozen=True)
class ChainReplica:
    """The CG replica of dihedral CG coordinates: only the atoms of the CG dihedrals (``atoms``, model indices, with
    their ``masses`` in Da), harmonically restrained on their ``bonds`` (i, j, r0 nm) and ``angles`` (i, j, k,
    theta0 rad) with force constants ``bond_k`` (kJ/mol/nm^2) and ``angle_k`` (kJ/mol/rad^2); i, j, k index
    ``atoms``. ``positions`` (nm) is the minimum's geometry the replicas start from."""

    atoms: Tuple[int, ...]
    masses: Tuple[float, ...]
    bonds: Tuple[Tuple[int, int, float], ...]
    angles: Tuple[Tuple[int, int, int, float], ...]
    positions: Tuple[Tuple[float, float, float], ...]
    bond_k: float = REPLICA_BOND_K
    angle_k: float = REPLICA_ANGLE_K

    kind = "chain"

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "atoms": list(self.atoms), "masses": list(self.masses), "bonds": [list(b) for b in self.bonds],
                "angles": [list(a) for a in self.angles], "positions": [list(x) for x in self.positions], "bond_k": self.bond_k,
                "angle_k": self.angle_k}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ChainReplica":
        return cls(tuple(int(a) for a in data["atoms"]), tuple(float(m) for m in data["masses"]),
                   tuple((int(i), int(j), float(r)) for i, j, r in data["bonds"]),
                   tuple((int(i), int(j), int(k), float(t)) for i, j, k, t in data["angles"]),
                   tuple(tuple(float(v) for v in x) for x in data["positions"]), float(data.get("bond_k", REPLICA_BOND_K)),
                   float(data.get("angle_k", REPLICA_ANGLE_K)))


@dataclass(frozen=True)
class ParticleReplica:
    """The CG replica of one linear CG coordinate: one particle of ``mass`` (Da) per replica, held by harmonic
    ``restraints`` (direction (3,), k in kT/nm^2) on the directions orthogonal to s, and by flat-bottomed walls of
    ``wall_kT_per_nm2`` at the coordinate's domain."""

    mass: float
    restraints: Tuple[Tuple[Tuple[float, float, float], float], ...]
    wall_kT_per_nm2: float

    kind = "particle"

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "mass": self.mass, "restraints": [[list(c), k] for c, k in self.restraints],
                "wall_kT_per_nm2": self.wall_kT_per_nm2}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ParticleReplica":
        return cls(float(data["mass"]), tuple((tuple(float(v) for v in c), float(k)) for c, k in data["restraints"]),
                   float(data["wall_kT_per_nm2"]))


Replica = Union[ChainReplica, ParticleReplica]


def replica_from_dict(data: Dict[str, Any]) -> Optional[Replica]:
    """The replica a CG definition's JSON describes (None for an empty mapping: no CG dynamics)."""
    if not data:
        return None
    kinds = {"chain": ChainReplica, "particle": ParticleReplica}
    if data.get("kind") not in kinds:
        raise ValueError(f"unknown CG replica kind {data.get('kind')!r} (known: chain, particle)")
    try:
        return kinds[data["kind"]].from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed {data['kind']} CG replica ({type(error).__name__}: {error})") from None


def cv_from_dict(data: Dict[str, Any]) -> CV:
    kind = data.get("kind")
    if kind == "dihedral":
        return DihedralCV(data["name"], tuple(data["atoms"]), data.get("sign", 1.0), data.get("offset", 0.0))
    if kind == "linear":
        return LinearCV(data["name"], data["particle"], tuple(data["coefficients"]), tuple(data["domain"]))
    raise ValueError(f"unknown CG coordinate kind {kind!r} (known: dihedral, linear)")


@dataclass(frozen=True)
class CGDefinition:
    """The CG coordinates of a molecule and the CG replica for dynamics (JSON-able; see the module docstring).

    ``replica``: a :class:`ChainReplica` (dihedral coordinates: the atoms of the quadruples, held together by
    their bonds and angles), a :class:`ParticleReplica` (one linear coordinate), or None (no CG dynamics).
    """

    coordinates: Tuple[CV, ...]
    replica: Optional[Replica] = field(default=None, compare=False)
    n_atoms: int = 0  # atoms of the molecule the coordinates are defined on (0: unknown)

    def __post_init__(self):
        coordinates = tuple(self.coordinates)
        if not coordinates:
            raise ValueError("a CG definition needs at least one CG coordinate")
        kinds = {cv.kind for cv in coordinates}
        if len(kinds) != 1:
            raise ValueError(f"CG coordinates must all be of one kind, got {sorted(kinds)}")
        names = [cv.name for cv in coordinates]
        if len(set(names)) != len(names):
            raise ValueError(f"CG coordinate names must be unique, got {names}")
        object.__setattr__(self, "coordinates", coordinates)
        if self.n_atoms:
            self.check_atoms(self.n_atoms)

    @property
    def dim(self) -> int:
        return len(self.coordinates)

    @property
    def kind(self) -> str:
        return self.coordinates[0].kind

    @property
    def names(self) -> List[str]:
        return [cv.name for cv in self.coordinates]

    @property
    def periodic(self) -> Tuple[bool, ...]:
        return tuple(cv.periodic for cv in self.coordinates)

    @property
    def domain(self) -> Tuple[Tuple[float, float], ...]:
        """(lower, upper) per CG coordinate."""
        return tuple(tuple(cv.domain) for cv in self.coordinates)

    @property
    def atoms(self) -> List[int]:
        """The atoms the CG coordinates depend on, in order of first appearance."""
        seen: List[int] = []
        for cv in self.coordinates:
            for a in (cv.atoms if cv.kind == "dihedral" else (cv.particle,)):
                if a not in seen:
                    seen.append(a)
        return seen

    @property
    def frame(self) -> str:
        """The frame of dihedral coordinates, as reference files name it: "iupac" (sign +1, offset 0), "paper"
        (sign -1 with offsets, the built-in alanine dipeptide's), "custom" otherwise; "linear" for nm."""
        if self.kind == "linear":
            return "linear"
        if all(cv.sign == 1.0 and cv.offset == 0.0 for cv in self.coordinates):
            return "iupac"
        return "paper" if all(cv.sign == -1.0 for cv in self.coordinates) else "custom"

    def from_dihedrals(self, theta: np.ndarray) -> np.ndarray:
        """IUPAC dihedrals theta (N, dim) rad of the CG atom quadruples -> CG coordinates s = wrap(sign theta - offset)."""
        signs, offsets = self._signs_offsets()
        return periodic_difference(signs * np.asarray(theta, dtype=np.float64) - offsets)

    def to_dihedrals(self, s: np.ndarray) -> np.ndarray:
        """CG coordinates s (N, dim) rad -> the IUPAC dihedrals theta = wrap(sign (s + offset)) they stand for."""
        signs, offsets = self._signs_offsets()
        return periodic_difference(signs * (np.asarray(s, dtype=np.float64) + offsets))

    #: the frames CG values can be given and returned in: "iupac" (plain IUPAC dihedrals, the default for users) or
    #: "model" (the definition's own: s = wrap(sign * IUPAC - offset)); linear coordinates are nm in either
    FRAMES = ("iupac", "model")

    def to_model_frame(self, values: np.ndarray, frame: str) -> np.ndarray:
        """CG values (n, dim) given in ``frame`` as the definition's own CG coordinates (a ValueError names a frame
        that is not one of :data:`FRAMES`)."""
        values = np.asarray(values, dtype=np.float64)
        if frame not in self.FRAMES:
            raise ValueError(f"frame must be one of {', '.join(self.FRAMES)} (IUPAC dihedrals or the model's own CG frame), got {frame!r}")
        return self.from_dihedrals(values) if frame == "iupac" and self.kind == "dihedral" else values

    def from_model_frame(self, s: np.ndarray, frame: str) -> np.ndarray:
        """The definition's CG coordinates ``s`` expressed in ``frame`` (inverse of :meth:`to_model_frame`)."""
        s = np.asarray(s, dtype=np.float64)
        if frame not in self.FRAMES:
            raise ValueError(f"frame must be one of {', '.join(self.FRAMES)} (IUPAC dihedrals or the model's own CG frame), got {frame!r}")
        return self.to_dihedrals(s) if frame == "iupac" and self.kind == "dihedral" else s

    def _signs_offsets(self) -> Tuple[np.ndarray, np.ndarray]:
        if self.kind != "dihedral":
            raise ValueError(f"CG coordinates {self.names} are {self.kind}, not dihedrals")
        return np.array([cv.sign for cv in self.coordinates]), np.array([cv.offset for cv in self.coordinates])

    def to_dict(self) -> Dict[str, Any]:
        return {"coordinates": [cv.to_dict() for cv in self.coordinates], "replica": self.replica.to_dict() if self.replica else {},
                "n_atoms": self.n_atoms}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "CGDefinition":
        if not isinstance(data, dict) or "coordinates" not in data:
            raise ValueError("a CG definition must be a mapping with 'coordinates'")
        return cls(tuple(cv_from_dict(cv) for cv in data["coordinates"]), replica_from_dict(data.get("replica") or {}), int(data.get("n_atoms", 0)))

    def check_atoms(self, n_atoms: int) -> None:
        """Raise a ValueError naming a CG coordinate whose atoms are out of range for ``n_atoms``."""
        for cv in self.coordinates:
            atoms = cv.atoms if cv.kind == "dihedral" else (cv.particle,)
            bad = [a for a in atoms if not 0 <= a < n_atoms]
            if bad:
                raise ValueError(f"CG coordinate '{cv.name}': atom index {bad[0]} is out of range for a system of {n_atoms} atoms")

    def values(self, positions) -> np.ndarray:
        """CG coordinates (B, dim) of positions (B, n_atoms, 3) nm (numpy in, numpy out)."""
        from .cg_coordinates import cg_module_from_definition
        import torch

        x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        x = x.reshape(-1, x.shape[-2], 3)
        if len(x) == 0:
            return np.zeros((0, self.dim))
        module = cg_module_from_definition(self, n_replicas=len(x), atoms_per_replica=x.shape[1])
        with torch.no_grad():
            return module(x.reshape(-1, 3)).numpy()

    def variable_forces(self) -> List[openmm.Force]:
        """One new Force per CG coordinate whose energy (kJ/mol read as rad or nm) *is* that coordinate, for
        OpenMM collective-variable tools (``app.Metadynamics``' ``BiasVariable``)."""
        forces = []
        for cv in self.coordinates:
            force = cv.variable_force()
            force.setName(f"CG coordinate {cv.name}")
            forces.append(force)
        return forces

    def restraint_forces(self, k_kJ_per_mol: float) -> List[openmm.Force]:
        """Harmonic restraints 0.5 k (s_k - target_k)^2 on every CG coordinate; the targets are the global
        parameters :meth:`target_parameters` (set them with ``context.setParameter``)."""
        forces = []
        for cv, parameter in zip(self.coordinates, self.target_parameters()):
            force = cv.restraint_force(k_kJ_per_mol, parameter)
            force.setName(f"CG restraint on {cv.name}")
            forces.append(force)
        return forces

    def target_parameters(self) -> List[str]:
        return [f"cg_target_{k}" for k in range(self.dim)]


def chain_replica(coordinates: Sequence[DihedralCV], masses: Sequence[float], positions: np.ndarray) -> ChainReplica:
    """The CG replica of dihedral coordinates: their atoms, bonded i-j, j-k, k-l and angled i-j-k, j-k-l as in the
    quadruples, with the bond lengths and angles of ``positions`` ((n_atoms, 3) nm); ``masses`` in Da per atom.

    The replica's bond graph must be a tree whose CG dihedrals turn about different bonds: then its internal
    coordinates are bonds, angles and the CG dihedrals, and the Boltzmann marginal of the dihedrals is exactly
    exp(-F) (see forces/cg_dynamics.py)."""
    atoms: List[int] = []
    for cv in coordinates:
        for a in cv.atoms:
            if a not in atoms:
                atoms.append(a)
    local = {a: k for k, a in enumerate(atoms)}
    x = np.asarray(positions, dtype=np.float64)
    bonds: List[List[float]] = []
    angles: List[List[float]] = []
    seen_bonds, seen_angles, axes = set(), set(), {}
    for cv in coordinates:
        i, j, k, l = (local[a] for a in cv.atoms)
        axis = frozenset((j, k))
        if axis in axes:
            raise ValueError(f"CG dihedrals '{axes[axis]}' and '{cv.name}' turn about the same bond: one CG coordinate per rotatable bond")
        axes[axis] = cv.name
        for a, b in ((i, j), (j, k), (k, l)):
            if frozenset((a, b)) not in seen_bonds:
                seen_bonds.add(frozenset((a, b)))
                bonds.append([a, b, float(np.linalg.norm(x[atoms[a]] - x[atoms[b]]))])
        for a, b, c in ((i, j, k), (j, k, l)):
            key = (b, frozenset((a, c)))
            if key not in seen_angles:
                seen_angles.add(key)
                u, v = x[atoms[a]] - x[atoms[b]], x[atoms[c]] - x[atoms[b]]
                angles.append([a, b, c, float(np.arctan2(np.linalg.norm(np.cross(u, v)), np.dot(u, v)))])
    parent = list(range(len(atoms)))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b, _ in bonds:
        ra, rb = root(int(a)), root(int(b))
        if ra == rb:
            raise ValueError("the bonds of the CG dihedrals form a ring: CG dynamics needs them to form a tree (a chain or branches)")
        parent[ra] = rb
    return ChainReplica(tuple(atoms), tuple(float(masses[a]) for a in atoms), tuple((int(a), int(b), r) for a, b, r in bonds),
                        tuple((int(a), int(b), int(c), t) for a, b, c, t in angles), tuple(tuple(p) for p in x[atoms].tolist()),
                        REPLICA_BOND_K, REPLICA_ANGLE_K)


__all__ = ["CGDefinition", "ChainReplica", "DihedralCV", "LinearCV", "ParticleReplica", "chain_replica", "cv_from_dict"]
