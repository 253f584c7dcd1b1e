# SPDX-License-Identifier: AGPL-3.0-or-later
"""MYCELYA_SYNC=1 runs every op synchronously, so errors raise at the op itself."""

import os

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER


def test_errors_raise_at_the_failing_op():
    os.environ["MYCELYA_SYNC"] = "1"
    try:
        machine = mycelya_torch.RemoteMachine(PROVIDER)
    finally:
        del os.environ["MYCELYA_SYNC"]
    try:
        a = torch.ones(3, device=machine.device())
        with pytest.raises(RuntimeError, match="aten::bitwise_and"):
            a & a  # float has no bitwise_and: only the remote kernel knows
        assert (a * 3).sum().item() == 9.0
    finally:
        machine.stop()
