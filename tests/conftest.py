# SPDX-License-Identifier: AGPL-3.0-or-later
"""Shared fixtures. MYCELYA_TEST_PROVIDER picks the provider (default: mock)."""

import os

import pytest
import torch
from lazy_seeding import skip_seeding_absent_backends

import mycelya_torch

PROVIDER = os.environ.get("MYCELYA_TEST_PROVIDER", "mock")
skip_seeding_absent_backends()


@pytest.fixture(scope="module")
def machine():
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    yield machine
    machine.stop()


@pytest.fixture(scope="module")
def device(machine):
    return machine.device()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
