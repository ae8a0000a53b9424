"""What a system says about itself in words and numbers: the facts model files carry and reports quote."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple


@dataclass(frozen=True)
class SystemDescription:
    """Facts about a system that model files carry and reports quote. Code reads only the typed fields;
    ``notes`` are other JSON-able facts (e.g. Müller-Brown's beta, a molecule's source files), stored and shown,
    never read.

    hamiltonian: the force field and solvent model, in words; angle_convention: the CG frame, in words;
    literature_basins_deg: named basins as (IUPAC) CG coordinates in degrees, which references are checked against.
    """

    hamiltonian: str = ""
    angle_convention: str = ""
    literature_basins_deg: Mapping[str, Tuple[float, ...]] = field(default_factory=dict)
    notes: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = ("hamiltonian", "angle_convention", "literature_basins_deg")

    def to_dict(self) -> Dict[str, Any]:
        """The flat JSON form model files store (``cg_metadata``); empty fields are left out."""
        record = dict(self.notes)
        record.update({name: getattr(self, name) for name in self._FIELDS if getattr(self, name)})
        if "literature_basins_deg" in record:
            record["literature_basins_deg"] = {name: list(value) for name, value in self.literature_basins_deg.items()}
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "SystemDescription":
        """Inverse of :meth:`to_dict` (any other key becomes a note)."""
        record = dict(record or {})
        basins = {str(name): tuple(float(v) for v in value) for name, value in dict(record.pop("literature_basins_deg", {}) or {}).items()}
        return cls(hamiltonian=str(record.pop("hamiltonian", "")), angle_convention=str(record.pop("angle_convention", "")),
                   literature_basins_deg=basins, notes=record)
