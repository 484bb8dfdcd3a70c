"""The error of the conversion commands: a problem with their input, reported to the user as one message."""


class ConversionError(Exception):
    """A conversion input problem, reported to the user as a message (no traceback)."""
