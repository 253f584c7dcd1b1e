# SPDX-License-Identifier: AGPL-3.0-or-later
"""Memory stays flat. A long run (a million small ops, ten thousand tensors
made and dropped, a thousand machines started and stopped) leaves the client
and the machine where they started, and a training loop's memory levels off.

Margins: RSS is measured after each phase, against a baseline taken once the
process is warm (torch's lazy imports done, plan caches filled). The machine
must hold exactly the storages it held before; resident memory may differ by
CLIENT_MARGIN_MB and SERVER_MARGIN_MB (allocators keep some freed memory for
reuse, mycelya-server up to its heap's trim threshold).
"""

import gc
import os
import time

import pytest
import torch
from processes import children_named, rss_mb

import mycelya_torch
from conftest import PROVIDER

CLIENT_MARGIN_MB = 48
SERVER_MARGIN_MB = 48
SMALL_OPS = 1_000_000
TENSORS = 10_000
MACHINES = 1_000


class Watch:
    """One machine's footprint on both sides."""

    def __init__(self, machine, server_pid):
        self.machine = machine
        self.server_pid = server_pid

    def snapshot(self):
        gc.collect()
        stats = self.machine.memory_stats()  # a sync point: every free has arrived
        return {
            "client_mb": rss_mb(os.getpid()),
            "server_mb": rss_mb(self.server_pid) if self.server_pid else 0.0,
            "storages": stats["storages"],
            "bytes_in_use": stats["bytes_in_use"],
            "generators": stats["generators"],
            "tracked_storages": stats["tracked_storages"],
            "interned_ops": stats["interned_ops"],
            "devices": torch.mycelya.device_count(),
            "machines": len(mycelya_torch.get_all_machines()),
        }


@pytest.fixture
def watched():
    before = set(children_named("mycelya-server"))
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    started = set(children_named("mycelya-server")) - before
    yield Watch(machine, started.pop() if started else None)
    machine.stop()


def _small_ops(device, count):
    x = torch.zeros(16, device=device)
    for _ in range(count):
        x.add_(1)
    return x


def _tensors(device, count):
    tensors = [torch.full((64,), float(i), device=device) for i in range(count)]
    total = sum(t[0] for t in tensors[:: count // 10]).item()
    del tensors
    return total


def _machines(count):
    for _ in range(count):
        machine = mycelya_torch.RemoteMachine(PROVIDER)
        torch.ones(2, device=machine.device()).add_(1)
        machine.stop()


def _assert_back(after, baseline, phase):
    for key in ("storages", "bytes_in_use", "generators", "tracked_storages", "devices", "machines"):
        assert after[key] == baseline[key], f"after {phase}: {key} {baseline[key]} -> {after[key]}"
    assert after["interned_ops"] <= baseline["interned_ops"] + 4, f"after {phase}: {after}"
    assert after["client_mb"] <= baseline["client_mb"] + CLIENT_MARGIN_MB, (
        f"after {phase}: client {baseline} -> {after}"
    )
    assert after["server_mb"] <= baseline["server_mb"] + SERVER_MARGIN_MB, (
        f"after {phase}: server {baseline} -> {after}"
    )


def test_a_long_run_returns_to_its_baseline(watched):
    device = watched.machine.device()
    # Warm: the first of each op fills torch's lazy imports and mycelya's plan cache.
    _small_ops(device, 1000)
    _tensors(device, 100)
    _machines(3)
    baseline = watched.snapshot()
    started = time.monotonic()

    x = _small_ops(device, SMALL_OPS)
    torch.testing.assert_close(x.cpu(), torch.full((16,), float(SMALL_OPS)))
    del x
    _assert_back(watched.snapshot(), baseline, f"{SMALL_OPS} small ops")

    assert _tensors(device, TENSORS) == sum(range(0, TENSORS, TENSORS // 10))
    _assert_back(watched.snapshot(), baseline, f"{TENSORS} tensors")

    _machines(MACHINES)
    _assert_back(watched.snapshot(), baseline, f"{MACHINES} machines")
    elapsed = time.monotonic() - started
    print(f"soak on {PROVIDER}: {elapsed:.0f} s; baseline {baseline}; end {watched.snapshot()}")


def test_training_loop_memory_levels_off(watched):
    device = watched.machine.device()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    samples = {}
    for step in range(1001):
        # Fresh data every step, and a sync point only now and then: the queue
        # may run ahead, which is where memory used to grow.
        x = torch.randn(64, 256).to(device)
        y = torch.randint(0, 10, (64,)).to(device)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            assert torch.isfinite(loss).item()
            samples[step] = watched.snapshot()
    for side in ("client_mb", "server_mb"):
        series = {step: sample[side] for step, sample in samples.items()}
        assert max(series.values()) - series[0] <= 50, f"{side} grew more than 50 MB: {series}"
        assert max(series[s] for s in series if s >= 100) - series[100] <= 10, (
            f"{side} did not level off: {series}"
        )
    assert samples[1000]["storages"] - samples[100]["storages"] == 0, samples
