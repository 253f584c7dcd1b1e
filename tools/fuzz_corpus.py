# SPDX-License-Identifier: AGPL-3.0-or-later
"""Writes the executor fuzzer's seed corpus (server/fuzz/corpus) from real
traffic: small PyTorch workloads run on the mock provider, which records each
request with the batch before it (MYCELYA_MOCK_CAPTURE_DIR).

    bazel run //tools:fuzz_corpus     # after source tools/bazel_env.sh

Inputs are named by their content's hash, so a rerun adds only new ones.
"""

import hashlib
import os
import shutil
import sys
import tempfile

# Larger inputs slow the fuzzer down without reaching more code.
MAX_INPUT_BYTES = 64 << 10


def workloads():
    import torch

    import mycelya_torch

    machine = mycelya_torch.RemoteMachine("mock", "T4")
    device = machine.device()
    torch.manual_seed(0)

    # Uploads, elementwise ops, reductions, a matrix product.
    x = torch.randn(8, 8, device=device)
    (x @ x.T + 1).relu().sum().item()
    # Views: slices, transposes, strided and offset refs.
    y = x[2:6, ::2].t()
    (y * 3).cpu()
    x.diagonal().add_(1.0).cpu()
    # Integer and boolean dtypes; data-dependent shapes (ExecuteRequest).
    i = torch.arange(20, device=device)
    (i[i % 3 == 0]).cpu()
    torch.nonzero(x > 0).cpu()
    torch.unique(i % 5).cpu()
    # In-place, out= and lists of tensors.
    out = torch.empty(8, 8, device=device)
    torch.add(x, x, out=out)
    torch.cat([x, out], dim=0).sum(0).cpu()
    torch.stack([x[0], x[1]]).cpu()
    # Random numbers: seeds, generators and their states.
    torch.mycelya.manual_seed(3)
    torch.rand(4, device=device).cpu()
    generator = torch.Generator(device=device)
    generator.manual_seed(5)
    torch.randn(3, device=device, generator=generator).cpu()
    torch.mycelya.get_rng_state(device)
    # A training step: autograd, an optimizer, dropout.
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 2)
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1] * 4, device=device))
    loss.backward()
    optimizer.step()
    loss.item()
    # Conversions and a failing op (an error response).
    x.to(torch.float64).half().cpu()
    try:
        (x @ torch.randn(3, 3, device=device)).cpu()
    except RuntimeError:
        pass
    machine.memory_stats()
    machine.stop()


def main():
    corpus = os.path.join(
        os.environ.get("BUILD_WORKSPACE_DIRECTORY", os.getcwd()), "server", "fuzz", "corpus"
    )
    os.makedirs(corpus, exist_ok=True)
    capture = tempfile.mkdtemp(prefix="mycelya-capture-")
    os.environ["MYCELYA_MOCK_CAPTURE_DIR"] = capture
    try:
        workloads()
        added = 0
        for name in sorted(os.listdir(capture)):
            with open(os.path.join(capture, name), "rb") as f:
                data = f.read()
            if len(data) > MAX_INPUT_BYTES:
                continue
            target = os.path.join(corpus, hashlib.sha1(data).hexdigest()[:16])
            if not os.path.exists(target):
                with open(target, "wb") as f:
                    f.write(data)
                added += 1
        print(f"{added} new inputs in {corpus} ({len(os.listdir(corpus))} in all)")
    finally:
        shutil.rmtree(capture)


if __name__ == "__main__":
    sys.exit(main())
