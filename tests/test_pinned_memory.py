# SPDX-License-Identifier: AGPL-3.0-or-later
"""pin_memory() with a mycelya accelerator: is_pinned() answers as under CUDA,
and pinned batches copied with non_blocking=True arrive intact."""

import torch


def test_pinned_tensors_say_so(device):
    with torch.mycelya.device(device):
        plain = torch.randn(4, 5)
        assert not plain.is_pinned()
        pinned = plain.pin_memory()
        assert pinned.is_pinned() and pinned[1:, 2:].is_pinned()
        assert torch.randn(3, pin_memory=True).is_pinned()
        torch.testing.assert_close(pinned, plain)
        del pinned
        # A freed block is forgotten: ordinary tensors that may reuse its memory are not pinned.
        assert not any(torch.empty(5, 4).is_pinned() for _ in range(8))


def test_a_pinning_data_loader_feeds_the_device(device):
    with torch.mycelya.device(device):
        data = torch.arange(32.0).reshape(8, 4)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(data), batch_size=4, pin_memory=True
        )
        received = []
        for (batch,) in loader:
            assert batch.is_pinned()
            on_device = batch.to(device, non_blocking=True)
            batch.zero_()  # the copy took the bytes before this
            received.append(on_device)
        torch.testing.assert_close(torch.cat(received).cpu(), data)
