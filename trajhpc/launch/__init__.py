"""Running a study: submitit Slurm arrays or local runs inside the container, the
submission record and crash journal, where every job stands, the live view, costs."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "submit": ["submit_command"],
    "statuscmd": ["status_command"],
})
