"""Every model family, one line each: a YAML config's `family` names one. A family's module defines
`FAMILY`, its entry (family.py); it is imported when a config or a run first names it."""

from __future__ import annotations

from importlib import import_module

from .family import Family

FAMILIES = {  # family name -> its module in models/
    "waitk": "waitk",
    "jstar": "jstar",
    "samu": "samu",
    "easist": "easist",
}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return import_module(f"{__package__}.{FAMILIES[name]}").FAMILY
