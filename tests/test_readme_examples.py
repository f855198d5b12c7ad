"""Every Python example of the README runs as it stands, from the repository's root."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = EXAMPLE.findall((REPO / "README.md").read_text())


def test_the_readme_has_examples_of_each_engine():
    text = "\n".join(EXAMPLES)
    for api in ("plan_static", "ReleaseRunner", "Judge"):
        assert api in text


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code, tmp_path):
    # master.cfg fragments are fenced as `py`, not `python`: they need a master.
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
