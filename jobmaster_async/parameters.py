"""Task parameters, as imported before the definitions became a package: see
``definitions/parameters.py``."""

from __future__ import annotations

from .definitions.parameters import Parameter, check_json, parameters_of

__all__ = ("Parameter", "check_json", "parameters_of")
