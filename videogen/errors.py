"""User-facing errors.

Anything a user can cause (a bad config, a missing model folder, an unreadable video) raises a
subclass of :class:`VideogenError`. The CLI prints its message on one line, without a traceback,
and exits with status 2. Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class VideogenError(Exception):
    """A mistake in the user's input, reported as one clear line."""


class ConfigError(VideogenError):
    """A job configuration that is malformed or asks for something impossible.

    Raised for one setting, it carries ``key`` (the setting as the user writes it, ``noise.warped.upsample``)
    and ``problem`` (what is wrong with it), so a caller collecting problems need not parse the text.
    """

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.key = key
        self.problem = problem

    @classmethod
    def of(cls, key: str, problem: str) -> ConfigError:
        """``key: problem``, with both kept."""
        return cls(f"{key}: {problem}", key=key, problem=problem)


class ModelLoadError(VideogenError):
    """A model folder that is missing, incomplete or in a format we refuse to load."""


class MediaError(VideogenError):
    """An image, video or flow file that cannot be read or written."""
