"""OpenMM integration: the learned PMF (and CG coordinates), and the flow's joint free energy, as OpenMM Forces
(TorchForce or PythonForce)."""
from .pmf_force import BACKENDS, OPENCL_TORCHFORCE_BROKEN, PMFEnergy, check_platform_for_system, TorchScriptEnergy, create_pmf_force, force_from_module, tabulated_pmf_force, load_torch_plugins, pmf_energy_module, torchforce_from_xml  # noqa: F401
from .flow_force import FlowFreeEnergy, create_flow_force, flow_energy_module  # noqa: F401
