"""The CLI's standard output and error: consoles of a sane width, text that degrades to ASCII,
and one rule for an output that cannot be written (a closed pipe, a full disk).

A closed pipe (``trajhpc aggregate | head -1``) is not an error: what follows is discarded
and the command runs to its end with its own exit status. Any other failure to write
(``> /dev/full``) is :class:`OutputError`, one line and exit 2 in the CLI.
"""

from __future__ import annotations

import codecs
import errno
import os
import unicodedata
from typing import Any, Mapping

from rich.console import Console

from trajhpc.core.errors import TrajhpcError

ASCII_FALLBACK = "trajhpc-ascii"
# What an ASCII (or Latin-1) terminal shows for the non-ASCII text trajhpc prints; other
# characters lose their accents (NFKD), and what is left becomes "?".
_ASCII = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-", "\u00b7": "-", "\u2022": "*",
    "\u2026": "...", "\u00d7": "x", "\u2265": ">=", "\u2264": "<=", "\u2260": "!=", "\u00b1": "+/-",
    "\u2192": "->", "\u2190": "<-", "\u2248": "~", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2502": "|", "\u2503": "|", "\u2500": "-", "\u2501": "-",
    "\u0394": "delta", "\u03b1": "alpha", "\u03c3": "sigma", "\u2713": "ok", "\u2717": "x",
}


def ascii_text(text: str) -> str:
    """``text`` in ASCII: known symbols spelled out (``−`` -> ``-``), accents dropped, the rest ``?``."""
    out = []
    for ch in text:
        if ord(ch) < 128:
            out.append(ch)
        elif ch in _ASCII:
            out.append(_ASCII[ch])
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(plain or "?")
    return "".join(out)


def _ascii_fallback(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    return ascii_text(err.object[err.start : err.end]), err.end


codecs.register_error(ASCII_FALLBACK, _ascii_fallback)


def console_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a console reads, without a ``COLUMNS``/``LINES`` that is not a positive
    integer: rich would take ``COLUMNS=0`` as a width of 0 and print nothing at all."""
    env = dict(os.environ if environ is None else environ)
    for name in ("COLUMNS", "LINES"):
        value = env.get(name)
        if value is not None and not (value.strip().isdigit() and int(value) > 0):
            del env[name]
    return env


def make_console(*, stderr: bool = False, **kwargs: Any) -> Console:
    """A rich Console on stdout (or stderr) of a sane width whatever ``COLUMNS`` says."""
    return Console(stderr=stderr, _environ=console_environ(), **kwargs)


class OutputError(TrajhpcError):
    """Standard output could not be written (a full disk, an I/O error), the pipe aside."""


def _discard(fd: int) -> None:
    """Point ``fd`` at /dev/null, so what is still buffered for it (flushed at exit) goes nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


class GuardedOutput:
    """A text stream around stdout: a closed pipe discards the rest, another write error is OutputError."""

    def __init__(self, stream: Any, name: str = "standard output"):
        self._stream = stream
        self._name = name
        self.pipe_closed = stream is None  # started with the descriptor closed (`>&-`): no reader either
        try:  # unencodable text degrades to ASCII instead of raising
            stream.reconfigure(errors=ASCII_FALLBACK)
        except (AttributeError, ValueError, OSError):
            pass

    def __getattr__(self, name: str) -> Any:
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)

    def _guard(self, action: str, *args: Any) -> Any:
        if self.pipe_closed:
            return len(args[0]) if args else None
        try:
            return getattr(self._stream, action)(*args)
        except BrokenPipeError:
            self._closed_pipe()
            return len(args[0]) if args else None
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.ECONNRESET):
                self._closed_pipe()
                return len(args[0]) if args else None
            self._discard_rest()
            raise OutputError(f"cannot write to {self._name}: {err.strerror or err}") from None

    def _closed_pipe(self) -> None:
        self.pipe_closed = True
        self._discard_rest()

    def _discard_rest(self) -> None:
        try:
            _discard(self._stream.fileno())
        except (AttributeError, ValueError, OSError):
            pass  # no file descriptor (a test's capture): nothing is flushed at exit

    def write(self, text: str) -> int:
        return self._guard("write", text)

    def flush(self) -> None:
        self._guard("flush")
