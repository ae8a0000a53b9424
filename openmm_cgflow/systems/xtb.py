"""GFN-xTB (tblite) as an OpenMM force: an expensive Hamiltonian that goes wherever an OpenMM System goes.

:func:`xtb_system` builds an ``openmm.System`` whose only force is an ``openmm.PythonForce`` computing the GFN2-xTB
(or GFN1-xTB) energy and forces of the whole molecule with `tblite <https://github.com/tblite/tblite>`_ (its
parameters are built into the wheel: nothing is downloaded). Because it is an OpenMM System, everything built on
one works unchanged: ``CGSystem.from_openmm`` (minimisation, Z-matrix, starting MD), the energy oracle's worker
processes (the force pickles into the System's XML; each process builds its own tblite calculator), CG dynamics,
the flow force, backmapping refinement and the MD / metadynamics / OPES baselines.

Units: tblite works in Hartree and Bohr; the force returns kJ/mol and kJ/mol/nm, as OpenMM expects. A
configuration whose SCF does not converge (or that tblite refuses) gets energy NaN and zero forces: the energy
oracle then drops it as it drops any non-finite energy (``nonfinite="nan"``), and training counts it as skipped.

Needs ``pip install tblite`` (``pip install openmm-cgflow[xtb]``).
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

HARTREE_IN_KJ_PER_MOL = 2625.4996394798254  # CODATA 2018 (E_h N_A)
BOHR_IN_NM = 0.0529177210903  # CODATA 2018
METHODS = ("GFN2-xTB", "GFN1-xTB")


class XTBEnergy:
    """The PythonForce's computation: ``state -> (energy kJ/mol, forces kJ/mol/nm (n, 3))`` of the molecule with
    atomic ``numbers``, total ``charge`` (e) and ``unpaired_electrons``, by tblite's ``method``.

    Picklable (what ``XmlSerializer`` stores): the tblite calculator is rebuilt lazily in each process.
    ``calls`` and ``failures`` count evaluations and SCF failures in this process.
    """

    def __init__(self, numbers: Sequence[int], charge: int = 0, unpaired_electrons: int = 0, method: str = "GFN2-xTB",
                 accuracy: float = 1.0, max_iterations: int = 250):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        numbers = np.asarray(numbers, dtype=np.int64)
        if numbers.ndim != 1 or len(numbers) == 0 or (numbers < 1).any() or (numbers > 86).any():
            raise ValueError(f"numbers must list the atomic numbers (1-86) of the molecule's atoms, got {numbers!r}")
        self.numbers = numbers
        self.charge = int(charge)
        self.unpaired_electrons = int(unpaired_electrons)
        self.method = method
        self.accuracy = float(accuracy)
        self.max_iterations = int(max_iterations)
        self.calls = 0
        self.failures = 0
        self._calculator = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_calculator"] = None
        state["calls"] = state["failures"] = 0
        return state

    def _calculate(self, positions_bohr: np.ndarray):
        from tblite.interface import Calculator

        _match_openmp_threads_to_cores()
        if self._calculator is None:
            self._calculator = Calculator(self.method, self.numbers, positions_bohr, charge=float(self.charge),
                                          uhf=self.unpaired_electrons)
            self._calculator.set("verbosity", 0)
            self._calculator.set("accuracy", self.accuracy)
            self._calculator.set("max-iter", self.max_iterations)
        else:
            self._calculator.update(positions_bohr)
        return self._calculator.singlepoint()

    def energy_and_forces(self, positions_nm: np.ndarray) -> Tuple[float, np.ndarray]:
        """Energy (kJ/mol) and forces (kJ/mol/nm) at ``positions_nm`` (n, 3); (NaN, zeros) where tblite fails."""
        self.calls += 1
        positions_nm = np.asarray(positions_nm, dtype=np.float64)
        if not np.isfinite(positions_nm).all():
            self.failures += 1
            return float("nan"), np.zeros_like(positions_nm)
        try:
            result = self._calculate(positions_nm / BOHR_IN_NM)
            energy = float(result.get("energy")) * HARTREE_IN_KJ_PER_MOL
            forces = -np.asarray(result.get("gradient"), dtype=np.float64) * (HARTREE_IN_KJ_PER_MOL / BOHR_IN_NM)
        except Exception:  # noqa: BLE001 - an SCF that does not converge, or a geometry tblite refuses
            self._calculator = None  # start the next one from a fresh guess
            self.failures += 1
            return float("nan"), np.zeros_like(positions_nm)
        if not np.isfinite(energy) or not np.isfinite(forces).all():
            self.failures += 1
            return float("nan"), np.zeros_like(positions_nm)
        return energy, forces

    def __call__(self, state: openmm.State):
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        return self.energy_and_forces(positions)


_OPENMP_THREADS = {"n": None}


def _match_openmp_threads_to_cores() -> None:
    """tblite runs on the process's OpenMP runtime (torch's libgomp, loaded with torch), which sized its thread pool
    to the cores the process had when it loaded. A process pinned later (the command line pins itself to one core)
    would then spin several OpenMP threads on one core, ~100x slower: set the thread count to the cores this
    process may use now, whenever that changes."""
    if not hasattr(os, "sched_getaffinity") or "OMP_NUM_THREADS" in os.environ:  # the user's own setting stands
        return
    n = len(os.sched_getaffinity(0))
    if _OPENMP_THREADS["n"] == n:
        return
    try:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(n)  # the runtime already loaded (dlopen by its soname)
    except (OSError, AttributeError):  # no GNU OpenMP: tblite then sizes its own pool
        pass
    _OPENMP_THREADS["n"] = n


def xtb_force(numbers: Sequence[int], charge: int = 0, unpaired_electrons: int = 0, method: str = "GFN2-xTB",
              accuracy: float = 1.0) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` with the xTB energy of all particles (see :class:`XTBEnergy`)."""
    force = openmm.PythonForce(XTBEnergy(numbers, charge, unpaired_electrons, method, accuracy))
    force.setName(f"{method} (tblite)")
    return force


def atomic_numbers(topology: app.Topology) -> np.ndarray:
    """Atomic numbers of a topology's atoms (every atom needs an element)."""
    numbers = []
    for atom in topology.atoms():
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name}) has no element: xTB needs every atom's element")
        numbers.append(atom.element.atomic_number)
    return np.asarray(numbers, dtype=np.int64)


def xtb_system(topology: app.Topology, charge: Optional[int] = None, unpaired_electrons: int = 0, method: str = "GFN2-xTB",
               accuracy: float = 1.0, masses: Optional[Sequence[float]] = None) -> openmm.System:
    """An OpenMM System of ``topology``'s atoms (element masses, or ``masses`` in Da) whose energy is xTB's, in
    vacuum. ``charge``: the molecule's total charge in e (default: 0)."""
    numbers = atomic_numbers(topology)
    system = openmm.System()
    atoms = list(topology.atoms())
    if masses is not None and len(masses) != len(atoms):
        raise ValueError(f"masses must give one mass per atom ({len(atoms)}), got {len(masses)}")
    for k, atom in enumerate(atoms):
        system.addParticle(float(masses[k]) if masses is not None else atom.element.mass.value_in_unit(unit.dalton))
    system.addForce(xtb_force(numbers, 0 if charge is None else charge, unpaired_electrons, method, accuracy))
    return system
