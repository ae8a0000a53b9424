"""Installation script for openmm-cgflow.

The three pins below are the only combination that loads together: openmm-torch 1.5 (its only
release) is linked against the CUDA-12 build of torch 2.9.1 and fails with other torch versions.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

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
    extras_require={"test": ["pytest", "pytest-xdist", "zuko==1.6.0", "hypothesis"]},
    entry_points={"console_scripts": ["cgflow = openmm_cgflow.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Chemistry",
    ],
)
