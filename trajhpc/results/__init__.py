"""Reading a study: records, unit- and item-level statistics, report.md, CSV tables, plots and the
terminal summary (`trajhpc aggregate`); how many units a comparison needs (`trajhpc power`)."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "aggregate": ["aggregate_command"],
    "power": ["power_command"],
    "studyresult": ["StudyResult"],
})
