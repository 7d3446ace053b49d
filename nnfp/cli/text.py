"""File names and error messages as the `nnfp` commands print them: one line each."""

__all__ = ["one_line", "printable"]


def printable(name):
    """A file name on one line: names with newlines or other control characters are quoted, escaped."""
    name = str(name)
    return name if name.isprintable() else repr(name)


def one_line(error):
    """An error message on one line (file names with newlines are escaped)."""
    return str(error).replace("\r", "\\r").replace("\n", "\\n")
