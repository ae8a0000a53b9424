"""OpenMM integration: the learned PMF (and CG coordinates) as OpenMM Forces (TorchForce or PythonForce)."""
from .cg_coordinates import DifferenceCG, DihedralCG, cg_module_from_metadata  # noqa: F401
from .pmf_force import BACKENDS, PMFEnergy, TorchScriptEnergy, create_pmf_force, load_torch_plugins, pmf_energy_module, torchforce_from_xml  # noqa: F401
