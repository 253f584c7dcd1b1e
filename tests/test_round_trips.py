# SPDX-License-Identifier: AGPL-3.0-or-later
"""Only the sync points the user asks for wait for the machine."""

import random

import torch
import torch.nn as nn

from conftest import PROVIDER


def test_a_training_step_makes_one_round_trip_per_item(machine, device):
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    data, target = torch.randn(16, 32), torch.randint(0, 10, (16,))

    def step():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(data.to(device)), target.to(device))
        loss.backward()
        optimizer.step()
        return loss

    step()  # first step: optimizer state is created
    machine.synchronize()
    before = machine.round_trips
    for _ in range(3):
        step()
    assert machine.round_trips == before  # no sync point asked for: nothing waited
    early = machine.early_reads
    loss = step().item()
    assert machine.round_trips == before + 1
    assert loss > 0
    # A server over gRPC (local-cuda, a cloud one) answers the item as soon as
    # the forward pass has run (a read beside the queued backward pass); mock
    # reads in order.
    assert machine.early_reads == early + (0 if PROVIDER == "mock" else 1)


def test_views_and_in_place_ops_need_no_round_trip(machine, device):
    cpu = torch.zeros(8, 8)
    x = cpu.to(device)
    machine.synchronize()
    before = machine.round_trips
    for t in (cpu, x):
        t[2:4].add_(1)
        t.t()[0].mul_(3)
    y = x.view(64)[::2] * 2
    assert machine.round_trips == before
    assert y.sum().item() == (cpu.view(64)[::2] * 2).sum().item()
    assert machine.round_trips == before + 1


def test_every_read_sees_every_earlier_write(machine, device):
    # On local-cuda a small read waits only for the last queued command that
    # mentions its tensor's storage: interleave writes through views, uploads
    # into slices and unrelated work with reads, against a CPU mirror.
    rng = random.Random(0)
    local = [torch.zeros(6, 6) for _ in range(3)]
    remote = [t.to(device) for t in local]
    work = torch.randn(64, 64)
    remote_work = work.to(device)
    for step in range(300):
        i, r, c = rng.randrange(3), rng.randrange(6), rng.randrange(6)
        kind = rng.randrange(7)
        if kind == 0:
            for t in (local[i], remote[i]):
                t[1:4].add_(1)
        elif kind == 1:
            for t in (local[i], remote[i]):
                t.t()[c].mul_(-1)
        elif kind == 2:
            row = torch.full((6,), step / 100)
            local[i][r] = row
            remote[i][r] = row
        elif kind == 3:
            j = rng.randrange(3)
            local[i] = torch.tanh(local[i] @ local[j])
            remote[i] = torch.tanh(remote[i] @ remote[j])
        elif kind == 4:
            # Unrelated work queued after the other tensors' last writes.
            work = torch.tanh(work @ work / 64)
            remote_work = torch.tanh(remote_work @ remote_work / 64)
        elif kind == 5:
            torch.testing.assert_close(remote[i][r, c].item(), local[i][r, c].item())
        else:
            torch.testing.assert_close(remote[i].cpu(), local[i])
    for t, expected in zip(remote, local, strict=True):
        torch.testing.assert_close(t.cpu(), expected)
    torch.testing.assert_close(remote_work.cpu(), work)
