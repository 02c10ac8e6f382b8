"""Checkpoint-and-requeue on Slurm's warning signal (DESIGN section 8).

`#SBATCH --signal=USR1@90` warns the tasks before the time limit. Lightning's own
auto-requeue saves from inside the signal handler, mid-episode: the resume skipped
an episode, and under DDP it deadlocked (rank 0 entered a collective from the
handler while rank 1 waited in the gradient all-reduce). Here the handler only sets
a flag. At each batch end (an episode boundary) the ranks agree on the flag with an
all-reduce MAX, all of them save `last.ckpt` together, rank 0 runs
`scontrol requeue $SLURM_JOB_ID`, and training stops. The requeued job resumes
with `run.resume=auto`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import torch

from stuffed_mamba import early_signals
from stuffed_mamba.training.checkpoint import LAST, save_atomically


class RequeueOnSignal(L.Callback):
    """`saver(trainer, pl_module)` writes last.ckpt (the run's EpisodeCheckpoint.save, so both agree
    on what was saved last); without one, last.ckpt is written here."""

    def __init__(
        self, checkpoint_dir: str | os.PathLike, signum: int = signal.SIGUSR1, requeue: bool = True, saver=None
    ):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.saver = saver
        self.signum = signum
        self.requeue = requeue
        self.flag = False
        self.requeued = False
        self._previous = None

    # -- the handler: nothing but a flag (no I/O, no collectives: it may run mid-all-reduce)
    def _handler(self, signum, frame) -> None:
        self.flag = True

    def install(self) -> None:
        """Install the handler now (the sooner, the fewer ways the default action can kill us)."""
        if self._previous is None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handler)
            if early_signals.received(self.signum):  # arrived during start-up (early_signals.py)
                self.flag = True

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.install()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            # USR1 can still arrive after training ended (Slurm sends it up to ~2 minutes before the
            # limit): the default action would kill a rank whose run is complete and fail the job,
            # so a default handler becomes "ignore"; a handler someone installed is put back.
            previous = signal.SIG_IGN if self._previous == signal.SIG_DFL else self._previous
            signal.signal(self.signum, previous)
            self._previous = None

    # -- the agreement, at an episode boundary
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._any_rank_flagged(trainer):
            return
        # saved before the requeue: `scontrol requeue` ends this job
        if self.saver is not None:
            self.saver(trainer, pl_module)
        else:
            save_atomically(trainer, self.checkpoint_dir / LAST)
        if trainer.is_global_zero:
            self._requeue_job()
        self.requeued = True
        trainer.should_stop = True

    def _any_rank_flagged(self, trainer) -> bool:
        if trainer.world_size == 1:
            return self.flag
        flag = torch.tensor([1.0 if self.flag else 0.0], device=trainer.strategy.root_device)
        return bool(trainer.strategy.reduce(flag, reduce_op="max").item() > 0)

    def _requeue_job(self) -> None:
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job_id else os.environ.get("SLURM_JOB_ID")
        if not self.requeue or job_id is None:
            print(
                f"[stuffed-mamba] signal {self.signum}: saved {self.checkpoint_dir / LAST}; no Slurm job to requeue",
                flush=True,
            )
            return
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode == 0:
            print(
                f"[stuffed-mamba] signal {self.signum}: saved {self.checkpoint_dir / LAST}, requeued job {job_id}",
                flush=True,
            )
        else:
            print(
                f"[stuffed-mamba] signal {self.signum}: saved {self.checkpoint_dir / LAST}, but `scontrol requeue {job_id}` "
                f"failed ({result.returncode}): {result.stderr.strip()}",
                flush=True,
            )


class StopOnInterrupt(RequeueOnSignal):
    """Ctrl-C (SIGINT) as Slurm's warning without the requeue: the ranks agree at the next episode
    boundary, save last.ckpt together and stop; `requeued` then means "stopped here". A second
    Ctrl-C aborts at once (Lightning's KeyboardInterrupt path), without a checkpoint."""

    def __init__(self, checkpoint_dir: str | os.PathLike, saver=None):
        super().__init__(checkpoint_dir, signum=signal.SIGINT, requeue=False, saver=saver)

    def _handler(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        # os.write, not print: a handler that prints can interrupt a print (reentrant call)
        os.write(
            2,
            b"\n[stuffed-mamba] Ctrl-C: stopping at the next episode boundary with a checkpoint "
            b"(Ctrl-C again aborts without one)\n",
        )

    def _requeue_job(self) -> None:
        pass  # the caller says where the run stopped and how to continue
