"""User-facing errors: one clear line naming the file and field, exit code 2 in the CLI."""

from __future__ import annotations

from pathlib import Path


class TrajhpcError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The CLI prints ``str(err)`` as one line and exits with code 2.
    """


class InputError(TrajhpcError):
    """Bad content in a file: names the file, the field (or record index) and, if known, the line."""

    def __init__(self, file: str | Path | None, field: str | None, message: str, line: int | None = None):
        self.file = str(file) if file is not None else None
        self.field = field
        self.line = line
        self.message = message
        where = self.file or "<input>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}")
