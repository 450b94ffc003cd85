"""Errors the core raises for bad input: always one line a user can read."""


class UserError(Exception):
    """Base of the errors a user can act on (bad file, bad model, bad data, PACS, export):
    ``str(err)`` is the one-line message the GUI shows; no traceback is logged for them."""


class ImageOpenError(UserError):
    """A file could not be indexed or decoded. ``str(err)`` is a one-line reason."""

    def __init__(self, reason: str):
        super().__init__(" ".join(str(reason).split()))
