"""Installation script for openmm-cgflow.

The three pins below are the only combination that loads together: openmm-torch 1.5 (its only
release) is linked against the CUDA-12 build of torch 2.9.1 and fails with other torch versions.

The shipped models (``torchscript_models/`` at the top of the repository, where users of a checkout find them) are
copied into the built package as ``openmm_cgflow/torchscript_models/``, so ``pip install`` users have them too
(``CGFlowModel.load("alanine-dipeptide")`` finds them either way).
"""
import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithModels(build_py):
    """build_py that also copies the shipped models into the package."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "openmm_cgflow" / "torchscript_models"
        for model in sorted((HERE / "torchscript_models").glob("*/*.pt")):
            destination = target / model.parent.name / model.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model, destination)

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "openmm_cgflow" / "_version.py").read_text()).group(1)

setup(
    name="openmm-cgflow",
    version=VERSION,
    description=(
        "Coarse-grained free-energy surfaces from conditional normalizing flows and active learning, "
        "with OpenMM energies and OpenMM forces"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    author="The openmm-cgflow authors",
    license="MIT",
    license_files=["LICENSE"],
    project_urls={"Method (ICML 2024)": "https://arxiv.org/abs/2402.01195"},
    cmdclass={"build_py": BuildWithModels},
    python_requires=">=3.10",
    packages=find_packages(include=["openmm_cgflow", "openmm_cgflow.*"]),
    package_data={"openmm_cgflow": ["configs/*.yaml", "data/*"]},
    install_requires=[
        "torch==2.9.1",
        "openmm==8.6.1",
        "openmmtorch==1.5",
        "openmmtools",
        "mdtraj",
        "numpy",
        "scipy",
        "matplotlib",
        "tqdm",
        "pyyaml",
        "openmm-opes",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist>=2.5", "zuko==1.6.0", "hypothesis", "mkdocs==1.6.1", "mkdocs-material", "mkdocstrings[python]",
                 "ray>=2.40", "tblite>=0.4"],
        "docs": ["mkdocs==1.6.1", "mkdocs-material", "mkdocstrings[python]"],
        "ray": ["ray>=2.40"],
        "xtb": ["tblite>=0.4"],
    },
    entry_points={"console_scripts": ["cgflow = openmm_cgflow.cli:main"]},
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Chemistry",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
