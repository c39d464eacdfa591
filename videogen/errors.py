"""User-facing errors.

Anything a user can cause (a bad config, a missing model folder, an unreadable video) raises a
subclass of :class:`VideogenError`. The CLI prints its message on one line, without a traceback,
and exits with status 2. Programming errors stay ordinary exceptions with tracebacks.
"""


class VideogenError(Exception):
    """A mistake in the user's input, reported as one clear line."""


class ConfigError(VideogenError):
    """A job configuration that is malformed or asks for something impossible."""


class ModelLoadError(VideogenError):
    """A model folder that is missing, incomplete or in a format we refuse to load."""


class MediaError(VideogenError):
    """An image, video or flow file that cannot be read or written."""
