# SPDX-License-Identifier: AGPL-3.0-or-later
"""The README's quick start: a matrix product on a remote machine.

tools/demo.sh                 # the default provider, mock
tools/demo.sh --provider mock --gpu-type H100
"""

import argparse

import torch

import mycelya_torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default="mock", help="provider name (default: mock)")
    parser.add_argument("--gpu-type", default="A100-40GB", help="GPU type to ask for")
    args = parser.parse_args()

    # Create a remote machine with an A100 GPU (on mock: emulated on this CPU)
    machine = mycelya_torch.RemoteMachine(args.provider, args.gpu_type)
    print(f"Machine {machine.machine_id} offers {machine.devices()}")

    # Operations run on the remote machine; locally only metadata is kept
    x = torch.randn(1000, 1000, device=machine.device())
    y = torch.randn(1000, 1000, device=machine.device())
    print(f"Tensor x shape: {x.shape}, device: {x.device}")
    print(f"Tensor y shape: {y.shape}")

    result = x @ y  # matrix multiplication happens remotely, queued without a round trip
    print(f"Result shape: {result.shape}")

    # Transfer the result back when needed: the one sync point
    result_cpu = result.cpu()
    print(f"Result shape: {result_cpu.shape}")

    # The same product on the local CPU gives the same numbers
    expected = x.cpu() @ y.cpu()
    torch.testing.assert_close(result_cpu, expected)
    print(f"Matches the local CPU result (sum {result_cpu.sum().item():.4f}).")
    print(f"Batches sent to the machine: {machine.batches_sent}")
    machine.stop()


if __name__ == "__main__":
    main()
