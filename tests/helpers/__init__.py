"""Fixtures and helpers the test modules share; a test module imports these, never another.

- `subprocesses`: environments of launch.py and other child processes, a free port.
- `files`: temporary folders.
- `images`: encoded test images (JPEG, PNG) and the decoded images of a prepared split.
- `checks`: tree comparisons and a fake clock.
- `training`: the digits set, the tiny config and its config file, launch.py and in-process
  training runs, and what a run leaves (metrics.jsonl, the newest checkpoint's parameters).
- `checkpoints`: a small sharded train state and data iterator for checkpoint tests.
- `faults`: fault-injection runs of launch.py and what they leave on disk.

`tests/trained_run.py` (one trained workdir) and `tests/tiny_training.py` (a tiny model
under any mesh) are helpers of the same kind.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
