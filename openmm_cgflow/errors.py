"""The package's error types for bad input: one line that names the problem, phrased for the interface that met it.

:class:`ConfigError` is any problem with settings or inputs. :class:`InterfaceError` is a usage error whose advice
names an option: its text is written once with placeholders (``{resume}``, ``{overwrite}``, ``{out}``, ``{seed}``,
``{record_every}``, ``{steps}``), ``str(error)`` speaks Python (``resume=True``) and :meth:`InterfaceError.for_cli`
speaks the command line (``--resume``), which is what ``cgflow`` prints.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration or input problem; the message is one line and names the offending key or value."""


class InterfaceError(ConfigError):
    """A usage error naming options, rendered for Python (``str``) or the command line (:meth:`for_cli`)."""

    PYTHON = {"resume": "resume=True", "overwrite": "overwrite=True", "out": "out_dir", "seed": "seed", "record_every": "record_every",
              "steps": "steps"}
    CLI = {"resume": "--resume", "overwrite": "--overwrite", "out": "--out", "seed": "--seed", "record_every": "--record-every",
           "steps": "--steps"}

    def __init__(self, template: str):
        self.template = template
        super().__init__(self._render(self.PYTHON))

    def for_cli(self) -> str:
        return self._render(self.CLI)

    def _render(self, names) -> str:
        text = self.template  # plain replacement of the known placeholders: braces in the data stay as they are
        for key, value in names.items():
            text = text.replace("{" + key + "}", value)
        return text
