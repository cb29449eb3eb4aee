"""User-facing errors: one clear line naming the file and field, exit code 2 in the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Exit status of a command stopped by Ctrl-C (128 + SIGINT): `trajhpc` exits with it, and
# `submit` returns it when interrupted while it waits for its jobs.
EXIT_INTERRUPTED = 130
# Exit status of a command stopped by SIGTERM (128 + SIGTERM), which unwinds as Ctrl-C does.
EXIT_TERMINATED = 143


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


def read_json_input(path: str | Path, noun: str) -> object:
    """The JSON value of a file the user names (a spec, a rates file); each failure is one
    InputError naming the file: ``<noun> file not found``, not UTF-8, not valid JSON (with its line)."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, f"{noun} file not found") from None
    except IsADirectoryError:
        raise InputError(path, None, f"is a folder, expected a {noun} JSON file") from None
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(path, None, f"cannot read {noun} file ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise InputError(path, None, f"not valid JSON ({err.msg})", line=err.lineno) from None


def last_line(text: Any, width: int = 120) -> str:
    """Last non-empty line of an error message, shortened to ``width``."""
    text = text if isinstance(text, str) else "" if text is None else str(text)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"
