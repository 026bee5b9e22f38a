"""User-facing errors.

Every problem a user can fix (bad input, missing data, mismatching checkpoint, bad config value) is raised
as a :class:`RobnetsError` whose message is one line naming the problem and the fix. The CLI prints that
line instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RobnetsError(Exception):
    """A problem with the user's input, data, checkpoint or configuration (one-line message)."""


class ConfigError(RobnetsError, ValueError):
    """A configuration file or override is invalid."""


class GenotypeError(RobnetsError, ValueError):
    """An architecture code or string is invalid."""


class CheckpointError(RobnetsError):
    """A checkpoint cannot be read or does not match the model."""


class DataError(RobnetsError):
    """A dataset is missing, incomplete or corrupt."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
