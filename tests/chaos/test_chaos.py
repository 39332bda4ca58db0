"""Chaos runs under pytest: a bounded slice in `make test`, every kind x 50 seeds with
`make chaos` (marker ``chaos``; `python -m tests.chaos.run` prints the same runs as a table)."""

from __future__ import annotations

import pytest

from tests import netns
from tests.chaos import faults
from tests.chaos.run import ChaosRun, run_kind

pytestmark = pytest.mark.integration

# One seed of each kind the slice covers, on one cluster in namespaces (every kind can run
# there); without namespaces, the process kinds alone on 127.0.0.1.
SLICE = [("kill_leader", 0), ("pause_leader", 0), ("isolate_leader", 0), ("split_minority_leader", 0),
         ("one_way_loss", 1)]
FULL_SEEDS = list(range(50))


def failures(results) -> str:
    return "\n".join(f"{r.kind} seed {r.seed} ({r.fault}):\n  " + "\n  ".join(r.violations)
                     for r in results if r.violations)


@pytest.mark.timeout(240)
def test_chaos_slice_loses_nothing_and_stays_linearizable(tmp_path):
    reason = netns.unavailable_reason()
    kinds = SLICE if reason is None else [(k, s) for k, s in SLICE if k in faults.PROCESS_KINDS]
    with ChaosRun(tmp_path, first_port=12000, namespaces=reason is None) as run:
        results = [run.episode(kind, seed) for kind, seed in kinds]
        network = run.network
    assert not failures(results), failures(results)
    assert all(r.lock_ops > 50 and r.workflows > 0 and r.tasks > 0 for r in results), results
    if network is not None:
        assert network.leftovers() == []
    if reason is not None:
        pytest.skip(f"network kinds not run: {reason}")


@pytest.mark.chaos
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("kind", faults.KINDS)
def test_fifty_seeds_of_each_fault_kind(tmp_path, kind):
    reason = netns.unavailable_reason() if kind in faults.NETWORK_KINDS else None
    if reason:
        pytest.skip(reason)
    port = 12000 + 200 * faults.KINDS.index(kind)
    results = run_kind(kind, FULL_SEEDS, tmp_path, port)
    assert len(results) == len(FULL_SEEDS)
    assert not failures(results), failures(results)
