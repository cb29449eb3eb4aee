"""The job directory, the one contract between launcher, job and aggregate: the name of
every file a job leaves, a strict and a lenient reader, state.json and the training log."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "paths": ["CheckpointDir", "FileProblem", "JobDir", "find_job_dirs", "read_json_object"],
    "documents": ["JobProblem", "MetricsDoc", "TokensDoc", "read_job_docs"],
    "snapshot": ["JobFiles", "read_job_dir"],
    "state": ["write_state"],
    "trainlog": ["TrainLog", "read_train_log"],
})
