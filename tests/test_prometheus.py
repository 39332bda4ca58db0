"""A real Prometheus (Debian's `prometheus`) scrapes every master and worker and answers queries."""

from __future__ import annotations

import shutil

import pytest

from agentflow.prometheus import INSTALL_HINT, check

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason=INSTALL_HINT)]


def test_prometheus_scrapes_every_node_and_its_queries_add_up(tmp_path):
    answers = check(tmp_path, first_port=11600, report=print)
    assert answers["masters with a leader"] == 3 and answers["leaders"] == 1
    assert answers["targets up"] == 5 and answers["workers active"] == 2
    assert answers["tasks completed"] >= answers["tasks completed before the workflow"] + 24
    assert answers["fsync p99 (s)"] is not None and answers["fsync p99 (s)"] > 0
