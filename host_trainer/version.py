"""The package version, in the bottom layer so that every module, the CLI included, may name it."""

__version__ = "0.2.0"
