"""Alanine-dipeptide CG dynamics: five backbone atoms per replica, bond/angle restraints and the PMF force on
(phi, psi): the replicas carry the requested angles and the replica's PMF is the all-atom model's. That CG dynamics
samples exp(-F) is checked once, for every system, in test_system_contract.py."""

import numpy as np
import pytest
import torch

from openmm_cgflow.forces import create_pmf_force, pmf_energy_module
from openmm_cgflow.coordinates.geometry import dihedral_angles
from openmm_cgflow.forces.cg_dynamics import replica_cg, replica_positions
from openmm_cgflow.systems import create_system
from openmm_cgflow.systems.alanine_dipeptide import from_paper_frame

def test_backbone_chains_have_the_requested_iupac_phi_psi():
    """Replica chains built for paper-frame s carry the IUPAC (phi, psi) of s (C-N-CA-C and N-CA-C-N of each
    five-atom chain), and reading them back gives s."""
    definition = create_system("alanine-dipeptide").cg_definition
    iupac = np.radians([[-150.0, 155.0], [60.0, 45.0], [-70.0, -40.0]])
    s = definition.from_dihedrals(iupac)
    x = torch.as_tensor(replica_positions(definition, s)).reshape(-1, 5, 3)
    phi = dihedral_angles(x[:, 0], x[:, 1], x[:, 2], x[:, 3])
    psi = dihedral_angles(x[:, 1], x[:, 2], x[:, 3], x[:, 4])
    np.testing.assert_allclose(torch.stack([phi, psi], -1).numpy(), iupac, atol=1e-12)
    np.testing.assert_allclose(from_paper_frame(s), iupac, atol=1e-12)
    np.testing.assert_allclose(replica_cg(definition, replica_positions(definition, s)), s, atol=1e-12)


def test_backbone_replica_gives_the_all_atom_pmf(reference_pmf_model):
    """The PMF force on a five-atom replica equals the model on the all-atom molecule with the same (phi, psi)."""
    path, _ = reference_pmf_model
    aldp = create_system("alanine-dipeptide")
    backbone_atoms = list(aldp.cg_definition.replica.atoms)
    assert backbone_atoms == [4, 6, 8, 14, 16]  # C(ACE), N, CA, C, N(NME)
    backbone, _ = pmf_energy_module(path, replica_atoms=backbone_atoms)
    full, _ = pmf_energy_module(path)
    positions = aldp.positions
    chain = torch.as_tensor(positions[backbone_atoms])
    torch.testing.assert_close(backbone(chain), full(torch.as_tensor(positions)), rtol=1e-12, atol=1e-12)


def test_replica_atoms_without_the_cg_atoms_is_an_error(reference_pmf_model):
    path, _ = reference_pmf_model
    with pytest.raises(ValueError, match=r"use atoms \[16\], which no particle"):
        create_pmf_force(path, replica_atoms=(4, 6, 8, 14))
