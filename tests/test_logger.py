"""One suite logger: a module's `get_logger(__name__)` lines reach the run's files (and rank 0's console) once the
run is set up, with nobody attaching handlers to that module's logger."""
import logging
import os

import pytest

from common.logger import get_logger, setup_logger


def read(path):
    with open(path) as f:
        return f.read()


@pytest.fixture()
def suite_logger():
    """The suite logger as a fresh process has it, restored after the test (no open files, propagating again)."""
    suite = logging.getLogger("suite")
    yield suite
    for h in list(suite.handlers):
        suite.removeHandler(h)
        h.close()
    suite.setLevel(logging.NOTSET)
    suite.propagate = True


def test_module_lines_reach_the_runs_log_files(tmp_path, capsys, suite_logger):
    run0, run1 = str(tmp_path / "r0"), str(tmp_path / "r1")
    module = get_logger("some.module.written.later")
    assert not module.handlers
    logger = setup_logger(run0, 0)
    logger.info("from the runner")
    module.info("from a module %d", 7)
    module.debug("below the run's level")
    for name in ("log.txt", "log_rank0.txt"):
        lines = read(os.path.join(run0, name)).splitlines()
        assert [line.split(" ", 2)[2] for line in lines] == ["from the runner", "from a module 7"], name
    assert capsys.readouterr().out.splitlines()[-1].endswith(" from a module 7")
    # another rank of another run: its own file only, nothing on the console; the first run's files are closed
    setup_logger(run1, 1)
    module.warning("rank 1 only")
    assert read(os.path.join(run1, "log_rank1.txt")).endswith(" rank 1 only\n")
    assert not os.path.exists(os.path.join(run1, "log.txt")) and "rank 1 only" not in capsys.readouterr().out
    assert "rank 1 only" not in read(os.path.join(run0, "log.txt"))
    assert logger is suite_logger and module.parent is suite_logger
