"""Alanine-dipeptide CG dynamics: five backbone atoms per replica, bond/angle restraints and the PMF force on
(phi, psi). Langevin dynamics in OpenMM samples exp(-F) (and, run hotter, does not: the test can fail)."""
import math

import numpy as np
import pytest
import torch

from openmm_cgflow.forces import create_pmf_force, pmf_energy_module
from openmm_cgflow.coordinates.geometry import dihedral_angles
from openmm_cgflow.forces.cg_dynamics import cg_dynamics_system, replica_cg, replica_positions, run_cg_langevin
from openmm_cgflow.reference.kld import forward_kld
from openmm_cgflow.systems import create_system
from openmm_cgflow.systems.alanine_dipeptide import from_paper_frame

N_BINS = 20
SUB = 5  # sub-grid points per bin and axis: bin probabilities integrate exp(-F) over the bin


def model_bin_probabilities(ensemble):
    fine = np.linspace(-math.pi, math.pi, N_BINS * SUB, endpoint=False) + math.pi / (N_BINS * SUB)
    s = np.stack(np.meshgrid(fine, fine, indexing="ij"), -1).reshape(-1, 2)
    F, _ = ensemble.predict(s)
    w = np.exp(-(F - F.min()))
    return s, w / w.sum(), (w.reshape(N_BINS, SUB, N_BINS, SUB).sum((1, 3)) / w.sum()).ravel()


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
    backbone_atoms = list(aldp.cg_definition.replica["atoms"])
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


@pytest.mark.parametrize("temperature, should_match", [(300.0, True), (450.0, False)])
def test_aldp_cg_langevin_samples_exp_minus_F(reference_pmf_model, temperature, should_match):
    """Replicas started from exp(-F) stay there under Langevin dynamics at the model's 300 K (forward KLD of
    the 20 x 20 histogram against exp(-F) <= 5e-3); run at 450 K the same check fails. 2,000 replicas for 3 ps:
    barrier crossings are rare in ps, so the basin populations keep the multinomial noise of the starting draw
    (~(basins - 1) / 2n in KLD); many short replicas keep that noise (and the iid floor, 1.5e-3) well below the
    threshold (measured: 2.1e-3 at 300 K, 8.0e-2 at 450 K)."""
    path, ensemble = reference_pmf_model
    s_fine, p_fine, p_bins = model_bin_probabilities(ensemble)
    rng = np.random.default_rng(0)
    n = 2000
    half_cell = math.pi / (N_BINS * SUB)
    start = s_fine[rng.choice(len(s_fine), size=n, p=p_fine)] + rng.uniform(-half_cell, half_cell, size=(n, 2))
    aldp = create_system("alanine-dipeptide")
    system = cg_dynamics_system(aldp, path, n)  # the PMF in kT of the system's 300 K
    s = run_cg_langevin(aldp, system, start, 1500, 20, timestep_fs=2.0, friction_per_ps=10.0, platform="CPU",
                        temperature_K=temperature)[10:].reshape(-1, 2)
    edges = np.linspace(-math.pi, math.pi, N_BINS + 1)
    counts = np.histogram2d(s[:, 0], s[:, 1], bins=[edges, edges])[0].ravel()
    kld = forward_kld(p_bins, -np.log((counts + 0.5) / (counts + 0.5).sum()))
    assert (kld <= 5e-3) == should_match, kld
