"""The manifest's ``tracking`` block: which metric logger (TensorBoard, MLflow, W&B) the jobs report to.

Tracking changes nothing a job computes, so it is in no job's spec (no job id moves): the
launcher hands it to every job with the study name (``context["tracking"]``, see
:func:`tracking_context`), and :mod:`trajhpc.job.tracking` logs through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import StringConstraints, model_validator

from trajhpc.spec import StrictModel

# One line, no control characters: these end up in paths, URIs and run names.
_LINE = r"^[^\x00-\x1f\x7f]+$"
Line = Annotated[str, StringConstraints(pattern=_LINE)]

# Which backend each option belongs to: an option given for another backend is refused
# (a `project:` under `backend: mlflow` would otherwise be silently ignored).
OPTION_BACKEND = {
    "dir": "tensorboard",
    "uri": "mlflow",
    "experiment": "mlflow",
    "project": "wandb",
    "entity": "wandb",
    "mode": "wandb",
}


class Tracking(StrictModel):
    """``tracking: {backend: none|tensorboard|mlflow|wandb, ...}`` (README "Tracking")."""

    backend: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"
    # tensorboard: the folder holding one run folder per job (default <run_root>/<study>/tensorboard).
    dir: Line | None = None
    # mlflow: the tracking URI (default sqlite:///<run_root>/<study>/mlflow.db) and experiment (default: study).
    uri: Line | None = None
    experiment: Line | None = None
    # wandb: project (default: study), entity, and mode; compute nodes often have no network, so offline by default.
    project: Line | None = None
    entity: Line | None = None
    mode: Literal["offline", "online"] | None = None

    @model_validator(mode="after")
    def _options_fit_backend(self) -> "Tracking":
        for option, backend in OPTION_BACKEND.items():
            if getattr(self, option) is not None and self.backend != backend:
                raise ValueError(f"{option!r} is a {backend} option, but backend is {self.backend!r}")
        return self


def tracking_context(tracking: Tracking, cwd: Path) -> dict[str, Any] | None:
    """What every job of the submission gets: the block's set options, a relative ``dir``
    made absolute (a job may start elsewhere); None when tracking is off."""
    if tracking.backend == "none":
        return None
    out = tracking.model_dump(exclude_none=True)
    if "dir" in out:
        out["dir"] = str((cwd / Path(out["dir"]).expanduser()).resolve())
    return out
