"""Any molecule as a CGSystem: an OpenMM System + Topology + positions and a list of CG dihedrals.

:func:`molecule_fields` (what ``CGSystem.from_openmm`` builds) minimises the structure, builds a Z-matrix from the
topology's bonds in which every CG dihedral is a torsion row, normalises it on the minimum, marks proper
torsions as circular for the flow, finds the stereocentres and describes the CG replica for CG dynamics. CG
coordinates are IUPAC dihedrals (mdtraj's convention) in rad on [-pi, pi).

:func:`molecule_inputs_from_config` reads the ``system:`` mapping of a YAML config::

    system:
      prmtop: ala2.prmtop          # Amber files (paths relative to the config file) ...
      inpcrd: ala2.inpcrd
      implicit_solvent: OBC1       # OBC1 | OBC2 | HCT | GBn | GBn2 | null (vacuum)
      # openmmtools: AlanineDipeptideVacuum   # ... or an openmmtools test system (built without constraints)
      cg_dihedrals: [[4, 6, 8, 14], [6, 8, 14, 16]]
      temperature: 300.0           # K
"""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ..coordinates.zmatrix import ZMatrixTransform, zmatrix_from_bonds
from .cg_definition import CGDefinition, DihedralCV, chain_replica
from .description import SystemDescription
from .fine_grained import ZMatrixCG

#: Keys of a ``system:`` mapping in a config, and what each does (the configuration reference shows them).
SYSTEM_KEY_DOCS = {
    "name": "the molecule's name in outputs and model files (default: the prmtop file's stem, or the openmmtools class name)",
    "prmtop": "Amber topology file, relative to the config file (or absolute); the System is built with constraints=None "
              "and no cutoff",
    "inpcrd": "Amber coordinates for the prmtop: the structure that is minimised and starts the starting MD",
    "implicit_solvent": "with prmtop: OBC1 | OBC2 | HCT | GBn | GBn2 | null (vacuum)",
    "openmmtools": "instead of prmtop/inpcrd: the name of an openmmtools test system, e.g. AlanineDipeptideVacuum "
                   "(built with constraints=None)",
    "pdb": "instead of prmtop/openmmtools: a PDB file (relative to the config file; bonds from its CONECT records or "
           "standard residues), for a hamiltonian that needs no force field (gfn2-xtb, gfn1-xtb)",
    "hamiltonian": "force-field (default: the prmtop's or openmmtools system's own) | gfn2-xtb | gfn1-xtb: "
                   "semi-empirical tight binding in vacuum (tblite; pip install 'openmm-cgflow[xtb]'), as an OpenMM PythonForce",
    "charge": "with an xTB hamiltonian: the molecule's total charge in e (default 0)",
    "cg_dihedrals": "the CG coordinates: 0-based atom quadruples [i, j, k, l], bonded i-j-k-l, one per CG dihedral "
                    "(IUPAC sign, rad)",
    "cg_names": "names of the CG dihedrals, used in plots and model files (default: phi, psi for two dihedrals, else d0, d1, ...)",
    "temperature": "K (default 300.0); the free energies are in kT at this temperature",
}
SYSTEM_KEYS = tuple(SYSTEM_KEY_DOCS)
IMPLICIT_SOLVENTS = {"OBC1": app.OBC1, "OBC2": app.OBC2, "HCT": app.HCT, "GBn": app.GBn, "GBn2": app.GBn2}
#: the ``hamiltonian`` key's values: None is the source's own force field; the others are tblite methods
HAMILTONIANS = {"force-field": None, "gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}


def _neighbours(n_atoms: int, bonds: Sequence[Tuple[int, int]]) -> Dict[int, List[int]]:
    neighbours: Dict[int, List[int]] = {i: [] for i in range(n_atoms)}
    for a, b in bonds:
        neighbours[a].append(b)
        neighbours[b].append(a)
    return neighbours


def check_torsions(n_atoms: int, bonds: Sequence[Tuple[int, int]], torsions: Sequence[Sequence[int]]) -> List[Tuple[int, int, int, int]]:
    """The CG dihedrals as tuples, or a ValueError naming the first bad one (index out of range, repeated atom,
    atoms not bonded in a chain i-j-k-l)."""
    bonded = {frozenset(b) for b in bonds}
    checked = []
    for torsion in torsions:
        try:
            quad = tuple(int(a) for a in torsion)
        except (TypeError, ValueError):
            raise ValueError(f"a CG dihedral must be four atom indices, got {torsion!r}") from None
        if len(quad) != 4 or len(set(quad)) != 4:
            raise ValueError(f"a CG dihedral must be four different atom indices, got {list(torsion)}")
        bad = [a for a in quad if not 0 <= a < n_atoms]
        if bad:
            raise ValueError(f"CG dihedral {list(quad)}: atom index {bad[0]} is out of range (the system has {n_atoms} atoms, 0-based)")
        for a, b in zip(quad[:-1], quad[1:]):
            if frozenset((a, b)) not in bonded:
                raise ValueError(f"CG dihedral {list(quad)}: atoms {a} and {b} are not bonded, so the atoms do not form a chain i-j-k-l")
        checked.append(quad)
    if not checked:
        raise ValueError("at least one CG dihedral is needed")
    return checked


def zmatrix_with_torsions(n_atoms: int, bonds: Sequence[Tuple[int, int]], heavy: Sequence[bool],
                          torsions: Sequence[Tuple[int, int, int, int]]) -> Tuple[List[int], List[List[int]], List[int]]:
    """:func:`~openmm_cgflow.coordinates.zmatrix.zmatrix_from_bonds` with the CG dihedrals as torsion rows;
    returns (reference atoms, rows, index of the row of each torsion), or a ValueError naming a dihedral that
    could not become a row."""
    reference, rows = zmatrix_from_bonds(n_atoms, bonds, heavy, torsions)
    row_of = []
    for quad in torsions:
        k = next((n for n, row in enumerate(rows) if tuple(row) in (quad, quad[::-1])), None)
        if k is None:
            raise ValueError(f"CG dihedral {list(quad)} cannot be made a torsion of the Z-matrix (a dihedral across a ring, or two CG "
                             "dihedrals that need the same atom placed two ways)")
        row_of.append(k)
    return reference, rows, row_of


def find_chirality_centres(topology: app.Topology) -> Tuple[Tuple[int, int, int, int, int], ...]:
    """Stereocentres from the bonds: heavy atoms with four bonded neighbours whose (element, sorted elements of
    their neighbours) are all different. Returns (centre, n1, n2, n3, n4) with sorted neighbours."""
    atoms = list(topology.atoms())
    neighbours = _neighbours(len(atoms), [(a.index, b.index) for a, b in topology.bonds()])
    symbol = [a.element.symbol if a.element is not None else "?" for a in atoms]

    def signature(j: int) -> Tuple[str, Tuple[str, ...]]:
        return symbol[j], tuple(sorted(symbol[m] for m in neighbours[j]))

    centres = []
    for atom in atoms:
        near = sorted(neighbours[atom.index])
        if symbol[atom.index] != "H" and len(near) == 4 and len({signature(j) for j in near}) == 4:
            centres.append((atom.index, *near))
    return tuple(centres)


def minimise(system: openmm.System, positions: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """Energy-minimised positions (nm) on the Reference platform (deterministic).

    OpenMM's L-BFGS first; where it ends at a non-finite or higher energy (a Hamiltonian with regions it cannot
    evaluate, such as xTB whose SCF fails far from the start, lets the line search jump there), a careful steepest
    descent from the start instead (:func:`_descend`)."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    start = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(context, tolerance, 0)
    state = context.getState(getPositions=True, getEnergy=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if math.isfinite(energy) and (not math.isfinite(start) or energy <= start):
        return state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return _descend(context, np.asarray(positions, dtype=np.float64))


def _descend(context: openmm.Context, x: np.ndarray, max_step_nm: float = 0.01, steps: int = 2000,
             force_tolerance: float = 10.0) -> np.ndarray:
    """Steepest descent that moves no atom more than ``max_step_nm`` per step, accepts only finite, lower energies
    (halving the step otherwise, growing it by 1.2 after a success) and stops once every force is below
    ``force_tolerance`` kJ/mol/nm or the step falls below 1e-6 nm."""
    def evaluate(y):
        context.setPositions(y)
        state = context.getState(getEnergy=True, getForces=True)
        return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), state.getForces(asNumpy=True).value_in_unit(
            unit.kilojoule_per_mole / unit.nanometer)

    energy, forces = evaluate(x)
    if not math.isfinite(energy):
        raise ValueError("the energy of the starting structure cannot be computed (NaN or inf)")
    step = max_step_nm
    for _ in range(steps):
        largest = float(np.abs(forces).max())
        if largest < force_tolerance or step < 1e-6:
            break
        trial = x + forces * (step / largest)
        trial_energy, trial_forces = evaluate(trial)
        if math.isfinite(trial_energy) and trial_energy < energy:
            x, energy, forces, step = trial, trial_energy, trial_forces, min(step * 1.2, max_step_nm)
        else:
            step *= 0.5
    return x


def _as_nm(positions) -> np.ndarray:
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    return np.asarray(positions, dtype=np.float64)


def molecule_fields(system: openmm.System, topology: app.Topology, positions, temperature, cg_dihedrals: Union[Sequence, Mapping[str, Sequence[int]]],
                    name: str = "molecule", minimize: bool = True, description: Optional[SystemDescription] = None) -> Dict[str, Any]:
    """The CGSystem fields of any molecule (see the module docstring); ``CGSystem.from_openmm`` builds it from them.

    ``positions``: (n_atoms, 3) nm or a Quantity; ``temperature``: K or a Quantity; ``cg_dihedrals``: a list of
    atom quadruples (0-based, bonded i-j-k-l; named ``phi``/``psi`` for two, ``d0``, ``d1``, ... otherwise) or a
    mapping name -> quadruple. The System must have no constraints (the flow generates every bond length).
    """
    if unit.is_quantity(temperature):
        temperature = temperature.value_in_unit(unit.kelvin)
    temperature = float(temperature)
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive number of kelvin, got {temperature}")
    n_atoms = system.getNumParticles()
    if topology.getNumAtoms() != n_atoms:
        raise ValueError(f"the topology has {topology.getNumAtoms()} atoms, the System {n_atoms} particles")
    if system.getNumConstraints():
        raise ValueError(f"the System has {system.getNumConstraints()} constraints; build it with constraints=None (the flow generates "
                         "every bond length, and a constrained energy would not be its density)")
    x = _as_nm(positions)
    if x.shape != (n_atoms, 3):
        raise ValueError(f"positions must have shape ({n_atoms}, 3) in nm, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("positions contain NaN or inf")
    if isinstance(cg_dihedrals, Mapping):
        names, quads = list(cg_dihedrals.keys()), list(cg_dihedrals.values())
    else:
        quads = list(cg_dihedrals)
        names = ["phi", "psi"] if len(quads) == 2 else [f"d{k}" for k in range(len(quads))]
    bonds = [(a.index, b.index) for a, b in topology.bonds()]
    torsions = check_torsions(n_atoms, bonds, quads)
    heavy = [a.element is None or a.element.symbol != "H" for a in topology.atoms()]
    reference, rows, row_of = zmatrix_with_torsions(n_atoms, bonds, heavy, torsions)
    bonded = {frozenset(b) for b in bonds}
    proper = [frozenset((row[2], row[3])) in bonded for row in rows]  # dihedral partner bonded to the angle partner
    minimum = minimise(system, x) if minimize else x
    circular_atoms = [row[0] for row, p in zip(rows, proper) if p]
    transform = ZMatrixTransform.build(n_atoms, reference, rows, circular_atoms, minimum, bonds=bonds)
    cg_entries = [int(transform.dihedral_index[k]) for k in row_of]
    mean = transform.mean.clone()
    mean[cg_entries] = 0.0  # IUPAC frame: s = wrap(-y) with sign +1, offset 0 (see fine_grained.py)
    std = transform.std.clone()
    std[cg_entries] = 1.0
    transform = ZMatrixTransform(n_atoms, reference, rows, [bool(c) for c in transform.circular.tolist()], mean, std)
    coordinates = tuple(DihedralCV(n, q) for n, q in zip(names, torsions))
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)]
    definition = CGDefinition(coordinates, chain_replica(coordinates, masses, minimum), n_atoms=n_atoms)
    fine = ZMatrixCG.from_definition(transform, definition)
    fg_circular = [n for n, entry in enumerate(fine.fg_index.tolist()) if entry in set(transform.dihedral_index[transform.circular].tolist())]
    description = description or SystemDescription()
    return dict(
        name=name,
        system=system,
        topology=topology,
        positions=minimum,
        temperature=temperature,
        cg_definition=definition,
        fine_grained=fine,
        flow_circular_indices=tuple(fg_circular),
        chirality_centres=find_chirality_centres(topology),
        description=SystemDescription(description.hamiltonian, description.angle_convention or "IUPAC dihedrals (mdtraj), rad",
                                      description.literature_basins_deg, description.notes),
    )


def check_system_config(value: Any) -> None:
    """Raise a ValueError naming the problem in a config's ``system:`` mapping (before anything is built)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"'system' must be a registered name or a mapping, got {value!r}")
    unknown = sorted(set(value) - set(SYSTEM_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in 'system' (known: {', '.join(SYSTEM_KEYS)})")
    sources = [k for k in ("prmtop", "openmmtools", "pdb") if k in value]
    if len(sources) != 1:
        raise ValueError("'system' needs exactly one of 'prmtop' (with 'inpcrd'), 'openmmtools' or 'pdb' (with an xTB 'hamiltonian')")
    if "prmtop" in value and "inpcrd" not in value:
        raise ValueError("'system.prmtop' needs 'system.inpcrd' (the coordinates)")
    solvent = value.get("implicit_solvent")
    if solvent is not None and solvent not in IMPLICIT_SOLVENTS:
        raise ValueError(f"'system.implicit_solvent' must be one of {', '.join(IMPLICIT_SOLVENTS)} or null, got {solvent!r}")
    hamiltonian = value.get("hamiltonian", "force-field")
    if hamiltonian not in HAMILTONIANS:
        raise ValueError(f"'system.hamiltonian' must be one of {', '.join(HAMILTONIANS)}, got {hamiltonian!r}")
    if "pdb" in value and HAMILTONIANS[hamiltonian] is None:
        raise ValueError("'system.pdb' carries no force field: give 'system.hamiltonian' (gfn2-xtb or gfn1-xtb), or use prmtop/inpcrd")
    if HAMILTONIANS[hamiltonian] is not None and solvent is not None:
        raise ValueError(f"'system.hamiltonian: {hamiltonian}' is in vacuum: 'system.implicit_solvent' must be null")
    charge = value.get("charge", 0)
    if isinstance(charge, bool) or not isinstance(charge, int):
        raise ValueError(f"'system.charge' must be an integer number of elementary charges, got {charge!r}")
    if "charge" in value and HAMILTONIANS[hamiltonian] is None:
        raise ValueError("'system.charge' applies to an xTB 'system.hamiltonian' (a force field carries its own charges)")
    dihedrals = value.get("cg_dihedrals")
    if not isinstance(dihedrals, list) or not dihedrals or any(not isinstance(d, list) or len(d) != 4 for d in dihedrals):
        raise ValueError(f"'system.cg_dihedrals' must be a list of atom quadruples [[i, j, k, l], ...], got {dihedrals!r}")
    if any(isinstance(a, bool) or not isinstance(a, int) for d in dihedrals for a in d):
        raise ValueError(f"'system.cg_dihedrals' must hold integer atom indices, got {dihedrals!r}")
    names = value.get("cg_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(dihedrals) or len(set(map(str, names))) != len(names)):
        raise ValueError("'system.cg_names' must list one unique name per CG dihedral")
    temperature = value.get("temperature", 300.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"'system.temperature' must be a positive number of kelvin, got {temperature!r}")


def molecule_inputs_from_config(value: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``CGSystem.from_openmm`` arguments of a config's ``system:`` mapping (see the module docstring); paths must
    already be absolute or relative to the working directory (``load_config`` resolves them against the config file)."""
    check_system_config(value)
    if "openmmtools" in value:
        system, topology, positions, label = _openmmtools_system(str(value["openmmtools"]))
    elif "pdb" in value:
        if not Path(value["pdb"]).is_file():
            raise FileNotFoundError(f"'system.pdb' file not found: {value['pdb']}")
        pdb = app.PDBFile(str(value["pdb"]))
        system, topology, positions, label = None, pdb.topology, pdb.getPositions(asNumpy=True), Path(value["pdb"]).stem
        if topology.getNumBonds() == 0:
            raise ValueError(f"'system.pdb' {value['pdb']} has no bonds (add CONECT records)")
    else:
        for key in ("prmtop", "inpcrd"):
            if not Path(value[key]).is_file():
                raise FileNotFoundError(f"'system.{key}' file not found: {value[key]}")
        prmtop = app.AmberPrmtopFile(str(value["prmtop"]))
        inpcrd = app.AmberInpcrdFile(str(value["inpcrd"]))
        solvent = value.get("implicit_solvent")
        system = prmtop.createSystem(implicitSolvent=IMPLICIT_SOLVENTS[solvent] if solvent else None, nonbondedMethod=app.NoCutoff,
                                     constraints=None)
        topology, positions = prmtop.topology, inpcrd.getPositions(asNumpy=True)
        label = Path(value["prmtop"]).stem
    dihedrals = [list(d) for d in value["cg_dihedrals"]]
    cg = dict(zip(map(str, value["cg_names"]), dihedrals)) if value.get("cg_names") else dihedrals
    source = {k: value[k] for k in ("prmtop", "inpcrd", "implicit_solvent", "openmmtools", "pdb", "hamiltonian", "charge") if k in value}
    method = HAMILTONIANS[value.get("hamiltonian", "force-field")]
    hamiltonian = ""
    if method is not None:  # the force field's System is replaced by tight binding on the same atoms (element masses)
        from .xtb import xtb_system

        system = xtb_system(topology, charge=int(value.get("charge", 0)), method=method)
        hamiltonian = f"{method} (tblite), vacuum, total charge {int(value.get('charge', 0))}"
    return dict(system=system, topology=topology, positions=positions, temperature=value.get("temperature", 300.0), cg_dihedrals=cg,
                name=str(value.get("name", label)), description=SystemDescription(hamiltonian=hamiltonian, notes={"source": source}))


def _openmmtools_system(class_name: str):
    """(System, Topology, positions, label) of an openmmtools test system, built without constraints."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            from openmmtools import testsystems
        except ImportError:
            raise ValueError("'system.openmmtools' needs openmmtools (pip install openmmtools)") from None
    factory = getattr(testsystems, class_name, None)
    if not isinstance(factory, type) or not issubclass(factory, testsystems.TestSystem):
        raise ValueError(f"'system.openmmtools': {class_name!r} is not an openmmtools test system")
    try:
        test_system = factory(constraints=None)
    except TypeError:
        test_system = factory()
    return test_system.system, test_system.topology, test_system.positions, class_name
