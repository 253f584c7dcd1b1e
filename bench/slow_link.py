# SPDX-License-Identifier: AGPL-3.0-or-later
"""Training across a slow link: a mycelya-server behind a loopback proxy that delays
each direction by --delay-ms, against the same loop in local PyTorch.

    bazel run //bench:slow_link                 # 25 ms each way: a 50 ms round trip
    bazel run //bench:slow_link -- --delay-ms 10

Prints, per model: the local step time; the remote step time with loss.item()
every step, and its excess over local compute in round trips (target: at most
1.1); the remote step time with no sync point in a loop of 10x --steps, that
loop's one final wait included, as a ratio to local compute (target: at most
1.1); round trips per step. Then the time from
RemoteMachine(...) to a first result through the server provider on that link,
and through the loopback fakes of RunPod and Modal (their own delays set to 0).
The server runs on this host: it and this client get --threads each (one by
default, on a 2-core host), as two machines would have cores of their own.
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn as nn
from delay_proxy import DelayProxy
from runpod_fixtures import start_fake_runpod
from server_process import ServerProcess

import mycelya_torch

TOKEN = "bench-token"


def mlp():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    return model, (torch.randn(64, 256), torch.randint(0, 10, (64,)))


def transformer_block():
    model = nn.Sequential(
        nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True),
        nn.Flatten(),
        nn.Linear(16 * 128, 10),
    )
    return model, (torch.randn(16, 16, 128), torch.randint(0, 10, (16,)))


def step_fn(model, device, data, target):
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    data, target = data.to(device), target.to(device)

    def step():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        return loss

    return step


def per_step(run, steps):
    start = time.perf_counter()
    run(steps)
    return (time.perf_counter() - start) / steps


def measure(name, make, machine, steps, rtt_s):
    model, (data, target) = make()
    local = step_fn(model, "cpu", data, target)
    remote_model, _ = make()
    remote_model.load_state_dict(model.state_dict())
    remote = step_fn(remote_model, machine.device("cpu"), data, target)

    def loop(step, sync_each, drain=lambda: None):
        def run(n):
            for _ in range(n):
                loss = step()
                if sync_each:
                    loss.item()
            drain()

        return run

    for step in (local, remote):  # warm-up: optimizer state, interned ops
        for _ in range(3):
            step().item()
    local_s = statistics.median(per_step(loop(local, True), steps) for _ in range(3))
    before = machine.round_trips
    item_s = statistics.median(per_step(loop(remote, True), steps) for _ in range(3))
    trips = (machine.round_trips - before) / (3 * steps)
    # A loop without a sync point waits once, at its end: over 10x the steps,
    # that one round trip is spread as it would be over a real epoch.
    nosync_s = statistics.median(
        per_step(loop(remote, False, machine.synchronize), 10 * steps) for _ in range(3)
    )
    excess_rtts = (item_s - local_s) / rtt_s
    print(
        f"{name:18s} local {local_s * 1e3:7.2f} ms | with .item(): {item_s * 1e3:7.2f} ms "
        f"= local + {excess_rtts:.2f} round trips (target <= 1.10) | no sync: {nosync_s * 1e3:7.2f} ms "
        f"= {nosync_s / local_s:.2f}x local (target <= 1.10) | {trips:.2f} round trips/step"
    )


def first_result_s(make_machine):
    start = time.perf_counter()
    machine = make_machine()
    (torch.ones(4, device=machine.device("cpu")) * 2).sum().item()
    elapsed = time.perf_counter() - start
    machine.stop()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="compute threads, here and on the server")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rtt_s = 2 * args.delay_ms / 1e3
    threads = str(args.threads)
    with ServerProcess(token=TOKEN, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}) as server:
        proxy = DelayProxy(server.port, args.delay_ms / 1e3)
        address = f"127.0.0.1:{proxy.port}"
        compute_threads = torch.get_num_threads()
        print(
            f"link: {args.delay_ms:g} ms each way ({rtt_s * 1e3:g} ms round trip), {compute_threads} threads"
        )
        machine = mycelya_torch.RemoteMachine("server", address=address, token=TOKEN, insecure=True)
        for name, make in (("mlp", mlp), ("transformer block", transformer_block)):
            measure(name, make, machine, args.steps, rtt_s)
        machine.stop()
        startup = first_result_s(
            lambda: mycelya_torch.RemoteMachine("server", address=address, token=TOKEN, insecure=True)
        )
        print(f"RemoteMachine(...) to first result: server provider over the link {startup * 1e3:.0f} ms")
        proxy.close()
    fake = start_fake_runpod()
    fake.provisioning_s = fake.starting_s = 0
    try:
        startup = first_result_s(lambda: mycelya_torch.RemoteMachine("runpod", "H100"))
        print(f"RemoteMachine(...) to first result: runpod through its fake {startup * 1e3:.0f} ms")
    finally:
        fake.close()
    try:
        from fakes import WHEEL
        from fakes.modal_fake import FakeModal
    except ImportError:
        return
    if WHEEL is None:
        return  # the fake's images install the wheel (bazel build //python:wheel)
    modal = FakeModal()
    os.environ.update(modal.env())
    modal.schedule_s = 0

    def make():
        return mycelya_torch.RemoteMachine("modal", "H100", wheel=WHEEL, tls_ca=modal.ca_pem_path)

    try:
        make().stop()  # builds the image (installs torch): the start measured is a cached image's
        startup = first_result_s(make)
        print(f"RemoteMachine(...) to first result: modal through its fake {startup * 1e3:.0f} ms")
    finally:
        modal.close()


if __name__ == "__main__":
    main()
