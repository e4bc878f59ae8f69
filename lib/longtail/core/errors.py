"""Errors a user can act on. The CLI prints their message as one line on stderr and exits 2.

Each message names the file, table, column or config key and what is wrong with it.
"""
from __future__ import annotations


class LongtailError(Exception):
    """Base of every error caused by input, configuration or environment, not by a bug."""


class ConfigError(LongtailError, ValueError):
    """A configuration file or override is wrong; names the file or dotted key."""


class InputError(LongtailError, ValueError):
    """Raw input (a file, line, column or value) is unusable; names the file and line or column."""


class SchemaError(LongtailError, ValueError):
    """A table or DataFrame lacks a column or has one of the wrong type; names both."""


class TableNotFoundError(LongtailError, FileNotFoundError):
    """A table the job needs does not exist in the warehouse; names table and path."""


class TableSchemaMismatchError(LongtailError, ValueError):
    """A write's schema does not match the existing table and evolution was not asked for."""


class ModelNotFoundError(LongtailError, LookupError):
    """A model name or version that does not exist."""


class EnvironmentProblem(LongtailError, RuntimeError):
    """The machine lacks something a job needs (Java, task slots, a local model directory)."""


class ConflictError(LongtailError, RuntimeError):
    """Another writer committed to a table in a way that conflicts with this job's write (Delta's
    concurrent append / delete / metadata-change conflicts); nothing of the write was committed.
    Rerunning the command reads the new version and succeeds."""
