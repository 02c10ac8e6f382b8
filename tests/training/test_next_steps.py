"""The last lines of `stuffed-mamba fit` name the commands that watch, evaluate and export this run's
checkpoint (issue 22): the printed eval and export commands, run as printed, work."""

from __future__ import annotations

import shlex

from stuffed_mamba.cli import main
from tests.training.test_start_and_stop import SMALL, TINY


def test_the_last_lines_are_commands_that_work_on_this_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", TINY, *SMALL, f"run.dir={run_dir}", "trainer.max_steps=3"]) == 0
    last = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split(":", 1)[0] for line in last] == ["watch", "evaluate", "export"]
    assert last[0] == f"watch:    tensorboard --logdir {run_dir}/tensorboard"
    commands = {line.split(":", 1)[0]: shlex.split(line.split(":", 1)[1].split("   (")[0]) for line in last}
    assert commands["evaluate"][:4] == ["stuffed-mamba", "eval", "loss", "--checkpoint"]
    assert commands["evaluate"][4] == commands["export"][2] == str(run_dir / "checkpoints" / "last.ckpt")

    assert main([*commands["export"][1:]]) == 0
    assert (run_dir / "export" / "config.json").is_file()
    assert main([*commands["evaluate"][1:], "--no-progress"]) == 0
    assert (run_dir / "eval" / "loss.json").is_file()
