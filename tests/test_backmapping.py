"""Backmapping CG frames to all-atom alanine dipeptide with a flow: the structures have the requested CG
coordinates, importance weights agree with a direct OpenMM evaluation, refinement keeps the CG frame and lowers
the energy, the CLI writes a trajectory, and bad input fails clearly."""
import math

import mdtraj
import numpy as np
import openmm
import pytest
import torch

from openmm_cgflow.backmapping import Backmapper
from openmm_cgflow.cli import main
from openmm_cgflow.export import ModelFileError, save_model
from openmm_cgflow.flows import ConditionalSplineFlow
from openmm_cgflow.systems import create_system
from openmm_cgflow.systems.alanine_dipeptide import FLOW_CIRCULAR_INDICES, from_paper_frame, phi_psi, to_paper_frame

CG = np.array([[0.0, 0.0], [0.4, -0.3], [-1.2, 2.0]])


@pytest.fixture(scope="module")
def flow_file(tmp_path_factory):
    """A small flow pre-trained by example on starting-basin-like data would need MD; an identity-initialised
    flow with slightly perturbed weights is enough to test the machinery (its samples are valid structures:
    the base is the normalised internal-coordinate space around the minimum)."""
    torch.manual_seed(0)
    aldp = create_system("alanine-dipeptide")
    flow = ConditionalSplineFlow(58, FLOW_CIRCULAR_INDICES, n_layers=2, hidden=16)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("flow") / "flow.pt"
    return save_model(flow, path, kind="conditional_flow", system=aldp.name, temperature_K=aldp.temperature, cg_dim=2, fg_dim=58,
                      cg_metadata=aldp.description.to_dict())


def test_structures_have_the_cg_frames_and_weights_are_consistent(flow_file):
    result = Backmapper(flow_file, platform="Reference").backmap(CG, n_per_frame=4, seed=1, frame="model")
    assert isinstance(result.trajectory, mdtraj.Trajectory) and result.trajectory.n_frames == 12
    iupac = Backmapper(flow_file, platform="Reference").backmap(from_paper_frame(CG), n_per_frame=4, seed=1)  # the default frame
    np.testing.assert_allclose(iupac.trajectory.xyz, result.trajectory.xyz, atol=1e-5)
    with pytest.raises(ValueError, match="frame must be one of iupac, model"):
        Backmapper(flow_file, platform="Reference").backmap(CG, frame="paper")
    s = to_paper_frame(phi_psi(result.trajectory.xyz.astype(np.float64)))
    d = np.abs(np.angle(np.exp(1j * (s - np.repeat(CG, 4, axis=0)))))
    assert d.max() < 1e-5
    assert np.allclose(result.weights.reshape(3, 4).sum(1), 1.0)
    assert ((result.ess >= 1 - 1e-12) & (result.ess <= 4 + 1e-12)).all()
    # the reduced energy of one structure, directly from an OpenMM Reference Context
    aldp = create_system("alanine-dipeptide")
    context = openmm.Context(aldp.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(result.trajectory.xyz[5].astype(np.float64))
    kT = 8.314462618e-3 * aldp.temperature
    u = context.getState(getEnergy=True).getPotentialEnergy()._value / kT
    assert u == pytest.approx(result.reduced_energies[5], rel=1e-5)  # positions went through float32 in mdtraj


def test_refinement_keeps_the_cg_frame_and_lowers_the_energy(flow_file):
    mapper = Backmapper(flow_file, platform="CPU")
    raw = mapper.backmap(CG, n_per_frame=2, seed=2, frame="model")
    refined = mapper.backmap(CG, n_per_frame=2, seed=2, refine="minimize", frame="model")
    assert (refined.reduced_energies < raw.reduced_energies).all()
    np.testing.assert_allclose(refined.log_weights, raw.log_weights)  # weights belong to the flow samples
    s = to_paper_frame(phi_psi(refined.trajectory.xyz.astype(np.float64)))
    assert np.abs(np.angle(np.exp(1j * (s - np.repeat(CG, 2, axis=0))))).max() < 0.05


def test_cli_writes_a_trajectory_and_weights(flow_file, tmp_path):
    np.save(tmp_path / "cg.npy", CG)
    assert main(["backmap", str(flow_file), str(tmp_path / "cg.npy"), "--out", str(tmp_path / "out.pdb"), "--n-per-frame", "2", "--frame", "model"]) == 0
    assert mdtraj.load(str(tmp_path / "out.pdb")).n_frames == 6
    assert np.load(str(tmp_path / "out.pdb") + ".weights.npz")["ess"].shape == (3,)
    assert main(["backmap", str(flow_file), str(tmp_path / "missing.npy"), "--out", str(tmp_path / "x.pdb")]) == 2


def test_bad_input(flow_file, tmp_path):
    mapper = Backmapper(flow_file, platform="Reference")
    with pytest.raises(ValueError, match="NaN"):
        mapper.backmap(np.array([[math.nan, 0.0]]))
    other = save_model(torch.nn.Linear(2, 2), tmp_path / "pmf.pt", kind="pmf_ensemble", system="alanine-dipeptide", temperature_K=300.0)
    with pytest.raises(ModelFileError, match="expected 'conditional_flow'"):
        Backmapper(other)
