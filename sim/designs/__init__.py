"""The data designs a simulation can run, each a faithful Python implementation of one system users choose between.

    >>> from lodestore.sim.designs import DESIGNS, design
    >>> sorted(DESIGNS)
    ['atomicstore', 'datastorer', 'elite', 'lyra', 'naive', 'profilestore']
    >>> design("naive").summary

Each design module says in its docstring where its behaviour comes from, offers the system's own API with Python
names (usable on its own, over any `lodestore.storage.Server`), and a `DataLayer` the simulator's game servers play
it through (`sim.designs._base` has the contract). `[store] design = "..."` in a scenario picks one; its options go
in `[store.<design>]`; `lodestore compare` runs several through the same storm.
"""

from lodestore.sim.designs._base import (FOREVER_MS, DataLayer, Design, DesignError, LayerCounters, ReplayChanges,
                                         check_options, read_values)
from lodestore.sim.designs._atomicstore import ATOMICSTORE, AtomicLayer, AtomicOptions
from lodestore.sim.designs._datastorer import DATASTORER, DatastorerLayer, DatastorerOptions
from lodestore.sim.designs._elite import ELITE, EliteLayer, EliteOptions
from lodestore.sim.designs._lyra import LYRA, LyraLayer, LyraOptions
from lodestore.sim.designs._naive import NAIVE, NaiveLayer, NaiveOptions
from lodestore.sim.designs._profilestore import PROFILESTORE, ProfileLayer, ProfileStoreOptions

__all__ = ["DESIGNS", "design", "DataLayer", "Design", "DesignError", "LayerCounters", "check_options", "FOREVER_MS",
           "ReplayChanges", "read_values",
           "LYRA", "LyraLayer", "LyraOptions", "NAIVE", "NaiveLayer", "NaiveOptions",
           "ATOMICSTORE", "AtomicLayer", "AtomicOptions", "PROFILESTORE", "ProfileLayer", "ProfileStoreOptions",
           "DATASTORER", "DatastorerLayer", "DatastorerOptions", "ELITE", "EliteLayer", "EliteOptions"]

DESIGNS: dict[str, Design] = {d.name: d for d in (LYRA, DATASTORER, ELITE, ATOMICSTORE, PROFILESTORE, NAIVE)}
"""Every design by name, lyra (the default) first."""


def design(name: str) -> Design:
    """The design called `name`; an unknown name raises ConfigError listing the known ones."""
    from lodestore.storage import ConfigError
    found = DESIGNS.get(name)
    if found is None:
        raise ConfigError(f"unknown design {name!r} (known: {', '.join(DESIGNS)})", field="design")
    return found
