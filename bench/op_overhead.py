# SPDX-License-Identifier: AGPL-3.0-or-later
"""Client-side cost of recording one small op, against local eager PyTorch.

    bazel run //bench:op_overhead                         # local-cuda (a real server process)
    bazel run //bench:op_overhead -- --provider mock
Prints microseconds per op (median of several runs) and the ratio.
"""

import argparse
import statistics
import time

import torch

import mycelya_torch


def per_op_us(x, ops=2000, repeats=5):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        y = x
        for _ in range(ops):
            y = y + 1
        samples.append((time.perf_counter() - start) / ops * 1e6)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default="local-cuda")
    args = parser.parse_args()
    machine = mycelya_torch.RemoteMachine(args.provider)
    remote = torch.zeros(16, device=machine.device())
    local = torch.zeros(16)
    per_op_us(remote, ops=100)  # warm up (op interning, first allocations)
    remote_us, local_us = per_op_us(remote), per_op_us(local)
    machine.synchronize()
    print(
        f"{args.provider}: {remote_us:.1f} us/op  local eager: {local_us:.1f} us/op  "
        f"ratio: {remote_us / local_us:.1f}x"
    )
    machine.stop()


if __name__ == "__main__":
    main()
