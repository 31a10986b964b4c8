"""The one exception type of the converters: a message that names the case, the file and what was expected."""


class ConversionError(Exception):
    """Bad input for a converter. ``main()`` prints the message and exits with status 1; nothing is left half-written."""
