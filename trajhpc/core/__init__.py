"""Foundations every other package stands on: one-line errors, atomic writes, file locks,
provenance, terminal tables, the GC pause for bulk work, and lazy package exports."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "atomic": ["atomic_write_bytes", "atomic_write_json", "atomic_write_jsonl", "atomic_write_text"],
    "errors": ["InputError", "TrajhpcError", "last_line", "read_json_input"],
    "gcpause": ["gc_paused"],
    "provenance": ["now_iso"],
    "termout": ["GuardedOutput", "OutputError", "ascii_text", "make_console"],
    "termtable": ["Col", "fit_table"],
})
