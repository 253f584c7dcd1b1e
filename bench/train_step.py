# SPDX-License-Identifier: AGPL-3.0-or-later
"""One training step of a small MLP and of a small transformer block, on a
machine's cpu device and in plain local PyTorch, with the ratio between them.

    bazel run //bench:train_step                          # local-cuda (a real server process)
    bazel run //bench:train_step -- --provider mock
    bazel run //bench:train_step -- --autocast bf16       # both sides under bf16 autocast
Each step ends with loss.item(), the one sync point; the script prints the
median step times, the batches sent and the blocking round trips per step.
Local and remote steps run in alternating rounds (--rounds of --steps each).
loss.item() returns once the forward pass has run remotely, so the machine
may still run a step's backward pass while the next step is recorded: each
remote round ends with machine.synchronize(), outside the step times, so
that no remote work spills into the next local round. "rounds" gives the
time per step of whole rounds, that final wait included.
"""

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn

import mycelya_torch


def mlp():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    return model, lambda: (torch.randn(64, 256), torch.randint(0, 10, (64,)))


def transformer_block():
    model = nn.Sequential(
        nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True),
        nn.Flatten(),
        nn.Linear(16 * 128, 10),
    )
    return model, lambda: (torch.randn(16, 16, 128), torch.randint(0, 10, (16,)))


def make_step(model, device, amp_dtype):
    optimizer = torch.optim.AdamW(model.parameters())
    # Local steps autocast as "cpu", remote ones as "mycelya" (the machine's cpu policy).
    autocast = torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def step(data, target):
        optimizer.zero_grad()
        with autocast:
            loss = nn.functional.cross_entropy(model(data.to(device)), target.to(device))
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def time_steps(step, batches, drain=lambda: None):
    """Per-step times, and the round's time with drain() (the machine's queue)."""
    times = []
    round_start = time.perf_counter()
    for data, target in batches:
        start = time.perf_counter()
        step(data, target)
        times.append(time.perf_counter() - start)
    drain()
    return times, time.perf_counter() - round_start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default="local-cuda")
    parser.add_argument("--steps", type=int, default=10, help="steps per round, on each side")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none")
    args = parser.parse_args()
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast]
    torch.manual_seed(0)
    machine = mycelya_torch.RemoteMachine(args.provider)
    device = machine.device("cpu")
    print(
        f"provider {args.provider}, device {device} ({machine.devices()}), "
        f"{torch.get_num_threads()} threads, autocast {args.autocast}"
    )
    for name, make in (("mlp", mlp), ("transformer block", transformer_block)):
        model, make_batch = make()
        batches = [make_batch() for _ in range(args.steps)]
        local_step = make_step(copy.deepcopy(model), "cpu", amp_dtype)
        remote_step = make_step(model.to(device), device, amp_dtype)
        for step in (local_step, remote_step):  # warm up: optimizer state, caches
            step(*batches[0])
        # Rounds of local and remote steps in turn, so that a slow spell of this
        # noisy machine lands on both sides.
        machine.synchronize()
        local, remote, local_rounds, remote_rounds = [], [], [], []
        sent, trips = machine.batches_sent, machine.round_trips
        for _ in range(args.rounds):
            times, round_time = time_steps(local_step, batches)
            local += times
            local_rounds.append(round_time)
            times, round_time = time_steps(remote_step, batches, machine.synchronize)
            remote += times
            remote_rounds.append(round_time)
        local, remote = statistics.median(local), statistics.median(remote)
        local_round = statistics.median(local_rounds) / args.steps
        remote_round = statistics.median(remote_rounds) / args.steps
        steps = args.rounds * args.steps
        # The synchronize() after each round is a round trip of the benchmark's own.
        trips = (machine.round_trips - trips - args.rounds) / steps
        print(
            f"{name:18s} local {local * 1e3:7.2f} ms/step   {args.provider} {remote * 1e3:7.2f} ms/step   "
            f"ratio {remote / local:5.2f}x   (rounds {remote_round / local_round:5.2f}x)   "
            f"batches/step {(machine.batches_sent - sent) / steps:5.1f}   round trips/step {trips:4.1f}"
        )
    machine.stop()


if __name__ == "__main__":
    main()
