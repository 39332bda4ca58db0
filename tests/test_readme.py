"""README's Python examples run as written, against a real cluster (only the addresses change).

Every ```python block of README.md is executed in a fresh namespace, in order, with the masters'
addresses of the example replaced by those of a cluster this test starts; the workflow file the
example reads comes from examples/.
"""

from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

from tests.procs import REPO, running_cluster

pytestmark = pytest.mark.integration

EXAMPLE_MASTERS = re.compile(r"127\.0\.0\.1:6767(,127\.0\.0\.1:676[89])*")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_has_the_python_examples():
    blocks = python_blocks()
    assert any("from agentflow import" in block and "Client(" in block for block in blocks)
    assert any("AgentActor" in block for block in blocks)


def test_readme_python_examples_run(tmp_path):
    with running_cluster(tmp_path, masters=3, workers=1, first_port=18500) as (local, client):
        urls = ",".join(f"127.0.0.1:{master.port}" for master in local.masters)
        previous = os.getcwd()
        os.chdir(REPO)
        try:
            for number, block in enumerate(python_blocks(), start=1):
                output = io.StringIO()
                with contextlib.redirect_stdout(output):
                    exec(compile(EXAMPLE_MASTERS.sub(urls, block), f"README.md python block {number}", "exec"), {})
                assert output.getvalue(), f"block {number} printed nothing"
        finally:
            os.chdir(previous)
