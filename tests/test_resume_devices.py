# SPDX-License-Identifier: AGPL-3.0-or-later
"""README's Pausing section: a resume onto a server that offers other devices than before
raises and leaves the machine paused, its storages kept. On local-cuda with a GPU, the resumed
server is made to see no GPU. A host without CUDA offers the same devices to every server, so
there this cannot happen and the test skips; core/machine_bounds_test.cpp checks the same
refusal on every host, through a test provider."""

import pytest
import torch
from server_process import server_binary

import mycelya_torch
from conftest import PROVIDER


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    """Paused state goes under $MYCELYA_HOME/state: a folder of this test's."""
    monkeypatch.setenv("MYCELYA_HOME", str(tmp_path))


def test_a_resume_onto_other_devices_raises_and_leaves_the_machine_paused(tmp_path, monkeypatch):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    try:
        if "cuda:0" not in machine.devices():
            pytest.skip("needs a GPU: without one, every server offers the same devices")
        values = torch.randn(6, 4)
        x = values.to(machine.device("cuda"))
        machine.pause()
        # The same server binary, started by local-cuda as always, but seeing no GPU.
        no_gpu = tmp_path / "mycelya-server-without-gpu"
        no_gpu.write_text(f'#!/bin/sh\nCUDA_VISIBLE_DEVICES= exec "{server_binary()}" "$@"\n')
        no_gpu.chmod(0o755)
        monkeypatch.setenv("MYCELYA_SERVER", str(no_gpu))
        with pytest.raises(RuntimeError, match=r"offers \[cpu\] now but offered \[cuda:0.*stays paused"):
            machine.resume()
        assert machine.paused
        monkeypatch.delenv("MYCELYA_SERVER")
        machine.resume()
        torch.testing.assert_close(x.cpu(), values)
    finally:
        machine.stop()
