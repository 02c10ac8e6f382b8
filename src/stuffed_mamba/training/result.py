"""`FitResult`: what a call of `fit` did, returned and written to `{run.dir}/fit_result.json` (rank 0)
for sweeps, scripts and `stuffed-mamba doctor`, which read it back with `read_result`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

RESULT_FILE = "fit_result.json"


@dataclass
class FitResult:
    """What `fit` did; also written to `{run.dir}/fit_result.json` (rank 0)."""

    global_step: int
    episodes: int
    tokens: int
    final_loss: float | None  # rank 0's mean loss over the segments of its last episode
    seconds: float
    checkpoint: str | None
    tensorboard_dir: str
    nonfinite_skipped: int
    requeued: bool
    interrupted: bool = False  # Ctrl-C: stopped at an episode boundary with a checkpoint
    already_complete: bool = False  # the run had reached trainer.max_steps before this call: nothing was done
    resumed_step: int | None = None  # the optimiser step this call resumed from; None: a fresh start


def already_complete(point, resume_from: str, run_dir: Path) -> FitResult:
    """The result of a run whose checkpoint `point` (a ResumePoint) already reached trainer.max_steps."""
    c = point.counters
    return FitResult(
        point.global_step,
        c.get("episodes_done", 0),
        c.get("tokens_seen", 0),
        None,
        0.0,
        resume_from,
        str(Path(run_dir) / "tensorboard"),
        c.get("nonfinite_total", 0),
        False,
        already_complete=True,
        resumed_step=point.global_step,
    )


def write_result(result: FitResult, run_dir: Path) -> Path:
    """`{run.dir}/fit_result.json` (beside checkpoints/)."""
    path = Path(run_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(result), indent=1) + "\n")
    return path


def read_result(run_dir: Path) -> FitResult | None:
    """The FitResult a finished `fit` wrote into `run_dir` (None when there is none)."""
    path = Path(run_dir) / RESULT_FILE
    return FitResult(**json.loads(path.read_text())) if path.is_file() else None
