# SPDX-License-Identifier: AGPL-3.0-or-later
"""Debian's libprotobuf (behind libmycelya_wire.so) and torch's libraries share one process."""

import torch

import mycelya_torch


def _loaded_libraries():
    with open("/proc/self/maps") as maps:
        return {line.split()[-1].rsplit("/", 1)[-1] for line in maps if "/" in line}


def test_protobuf_and_torch_in_one_process():
    machine = mycelya_torch.RemoteMachine("mock")
    # every op below is encoded to protobuf and decoded again by the mock executor
    x = torch.arange(12.0, device=machine.device()).view(3, 4)
    expected = torch.arange(12.0).view(3, 4)
    torch.testing.assert_close((x @ x.t()).cpu(), expected @ expected.t())
    machine.stop()
    libraries = _loaded_libraries()
    assert any(name.startswith("libprotobuf.so") for name in libraries), libraries
    assert "libmycelya_wire.so" in libraries
    assert "libtorch_cpu.so" in libraries
