"""Errors whose message is the whole story for the user: ``qa-answer`` prints them as one line, no traceback.

Kept apart from the modules that raise them so that the CLI can catch every one without importing torch.
"""

from __future__ import annotations


class SettingsError(ValueError):
    """A setting is missing or invalid; the message is meant for the user as is."""


class FaultError(ValueError):
    """``QA_TEST_FAULT`` names no known fault point."""


class SourceError(Exception):
    """The source cannot be listed or an object cannot be fetched; the message is for the user."""


class ModelLoadError(RuntimeError):
    """The QA model or its tokenizer could not be loaded; the message is meant for the operator."""


class OutputError(Exception):
    """An output file cannot be written (full disk, read-only folder, ...); the message is for the user."""


class NextDatumError(RuntimeError):
    """``pachctl next datum`` failed: the worker is gone or the command is not Pachyderm's."""


#: What ``qa-answer`` reports as ``qa-answer: error: <message>`` and exit 1.
USER_ERRORS = (SettingsError, FaultError, SourceError, ModelLoadError, OutputError, NextDatumError)
