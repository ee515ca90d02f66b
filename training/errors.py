"""Domain exceptions of the training side, each with the exit code the CLI maps it to."""

from __future__ import annotations


class ChampionError(Exception):
    """Base class: a failure the user can act on, with a message naming what is at fault."""

    exit_code = 1


class ConfigError(ChampionError):
    """`champion.toml` or the environment is wrong."""

    exit_code = 2


class DataError(ChampionError):
    """Input data cannot be used."""


class RegistryError(ChampionError):
    """The model registry is unreachable or holds something we cannot use."""


class IntegrityError(RegistryError):
    """A stored model does not match its recorded digest or the declared safe types."""


class StoreUnavailable(ChampionError):
    """A store the deployment keeps its state in (the shared database) does not answer."""


class LeaseBusyError(ChampionError):
    """Another writer holds the single-writer lease."""

    exit_code = 3
