"""Reference PMFs of systems with 1-3 CG dihedrals: umbrella sampling, then a mean-force (or vFEP) fit on a basis."""
