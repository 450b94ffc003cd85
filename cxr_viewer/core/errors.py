"""Errors the core raises for bad input: always one line a user can read."""


class ImageOpenError(Exception):
    """A file could not be indexed or decoded. ``str(err)`` is a one-line reason."""

    def __init__(self, reason: str):
        super().__init__(" ".join(str(reason).split()))
