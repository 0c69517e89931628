"""Errors that the apps report as one line and a non-zero exit, without a traceback."""


class MindgapError(Exception):
    """Bad input or configuration: the message names the record, field or key at fault."""


class ConfigError(MindgapError):
    """A configuration value is missing, misspelt, of the wrong type or out of range."""


class DataError(MindgapError):
    """A data file is missing or a record lacks a field the stage needs."""
