"""The errors and the warning the data raises: what users catch, shared by every data module."""

from __future__ import annotations


class DataError(ValueError):
    """The competition data cannot be used as given; the message says what is wrong and how to fix it."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The competition folder or one of its CSV files is not there (both a DataError and a FileNotFoundError)."""


class DataWarning(UserWarning):
    """Something about the data that does not stop training (e.g. a broken test set) but needs a fix later."""
