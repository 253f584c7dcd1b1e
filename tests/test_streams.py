# SPDX-License-Identifier: AGPL-3.0-or-later
"""Streams and events on a mycelya device, as torch.cuda and torch.accelerator offer them.

Every stream of a device runs its work in one order (the order ops were
queued), so results never depend on which stream ran what; events live on the
machine and are timed there.
"""

import time

import pytest
import torch


@pytest.fixture
def current(device):
    """The machine's device, made current for the test."""
    with torch.mycelya.device(device):
        yield device


def test_a_new_stream_becomes_current_inside_with(current):
    default = torch.accelerator.current_stream()
    assert default.stream_id == 0
    stream = torch.Stream(device=current)
    other = torch.mycelya.Stream()
    assert stream.device == current == other.device
    assert stream.stream_id not in (0, other.stream_id)
    with stream:
        assert torch.accelerator.current_stream() == stream
        assert torch.mycelya.current_stream() == stream
    assert torch.accelerator.current_stream() == default
    with torch.mycelya.stream(other):
        assert torch.mycelya.current_stream(current) == other
    with torch.mycelya.stream(None):
        assert torch.mycelya.current_stream() == default
    assert torch.mycelya.default_stream() == default


def test_set_stream_is_per_thread(current):
    import threading

    stream = torch.mycelya.Stream(current)
    torch.mycelya.set_stream(stream)
    try:
        seen = []
        with torch.mycelya.device(current):
            thread = threading.Thread(target=lambda: seen.append(torch.mycelya.current_stream(current)))
            thread.start()
            thread.join()
        assert seen[0].stream_id == 0
        assert torch.mycelya.current_stream() == stream
    finally:
        torch.mycelya.set_stream(torch.mycelya.default_stream())


def test_work_on_a_side_stream_gives_the_cpu_values(current):
    a_cpu = torch.randn(64, 64)
    a = a_cpu.to(current)
    side = torch.mycelya.Stream()
    side.wait_stream(torch.mycelya.current_stream())
    with torch.mycelya.stream(side):
        b = (a @ a).relu()
    torch.mycelya.current_stream().wait_stream(side)
    c = b.sum(dim=0)
    torch.testing.assert_close(c.cpu(), (a_cpu @ a_cpu).relu().sum(dim=0))
    side.synchronize()
    assert side.query()


def test_events_time_the_work_between_them_on_the_machine(current):
    x = torch.randn(256, 256, device=current)
    start = torch.Event(enable_timing=True)
    middle = torch.mycelya.Event(enable_timing=True)
    end = torch.mycelya.Event(enable_timing=True)
    assert isinstance(middle, torch.mycelya.Event) and isinstance(middle, torch.Event)
    began = time.perf_counter()
    start.record()
    for _ in range(10):
        x = torch.tanh(x @ x)
    middle.record()
    end.record(torch.mycelya.current_stream())
    end.synchronize()
    wall_ms = (time.perf_counter() - began) * 1000
    assert end.query() and start.query()
    work = start.elapsed_time(middle)
    rest = middle.elapsed_time(end)
    # Times on the machine's clock: within what this process waited, and additive.
    assert 0 <= work <= wall_ms
    assert 0 <= rest <= work
    torch.testing.assert_close(start.elapsed_time(end), work + rest, rtol=0, atol=1e-3)


def test_an_event_orders_work_across_streams(current):
    side = torch.mycelya.Stream()
    done = torch.mycelya.Event()
    with torch.mycelya.stream(side):
        y = torch.arange(10.0, device=current) * 2
        done.record()
    torch.mycelya.current_stream().wait_event(done)
    done.synchronize()
    torch.testing.assert_close(y.cpu(), torch.arange(10.0) * 2)
    stream_event = torch.mycelya.current_stream().record_event()
    assert stream_event.query()


def test_an_unrecorded_event_is_done_and_cannot_be_timed(current):
    timed = torch.mycelya.Event(enable_timing=True)
    assert timed.query()
    timed.synchronize()  # nothing to wait for
    other = torch.mycelya.Event(enable_timing=True)
    other.record()
    with pytest.raises(ValueError, match="recorded"):
        timed.elapsed_time(other)
    untimed = torch.mycelya.Event()
    untimed.record()
    with pytest.raises(ValueError, match="enable_timing=True"):
        other.elapsed_time(untimed)
    # The machine is still fine.
    torch.testing.assert_close(torch.ones(3, device=current).sum().cpu(), torch.tensor(3.0))


def test_torch_accelerator_synchronize_waits_for_the_machine(current):
    x = torch.ones(1000, device=current).cumsum(0)
    torch.accelerator.synchronize()
    torch.mycelya.synchronize(current)
    assert x[-1].item() == 1000
