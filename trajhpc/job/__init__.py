"""One job, top to bottom: prepare the data, train one adapter through the blocks in order,
evaluate after every stage, checkpoint and resume exactly; models, batching and scoring."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "run": ["JobTask", "run_job", "run_job_command"],
    "models": ["resolve_model"],
    "scoring": ["Score", "score", "summarize"],
    "baselines": ["baseline_rows"],
})
