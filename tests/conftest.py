# SPDX-License-Identifier: AGPL-3.0-or-later
"""Shared fixtures. MYCELYA_TEST_PROVIDER picks the provider (default: mock)."""

import os

import pytest
import torch
from lazy_seeding import skip_seeding_absent_backends

import mycelya_torch

PROVIDER = os.environ.get("MYCELYA_TEST_PROVIDER", "mock")
# A cloud provider's machines need a GPU type; its fake serves the CPU behind it.
MACHINE_ARGS = ("H100",) if PROVIDER == "runpod" else ()
skip_seeding_absent_backends()


@pytest.fixture(scope="session", autouse=True)
def _cloud_fake():
    """On runpod, the loopback fake of RunPod's API, for the whole run; no pod may outlive it."""
    if PROVIDER != "runpod":
        yield None
        return
    from runpod_fixtures import start_fake_runpod

    fake = start_fake_runpod()
    yield fake
    for machine in mycelya_torch.get_all_machines():
        machine.stop()
    running = fake.running_pods()
    fake.close()
    assert not running, f"pods left running: {running}"


@pytest.fixture(scope="module")
def machine():
    machine = mycelya_torch.RemoteMachine(PROVIDER, *MACHINE_ARGS)
    yield machine
    machine.stop()


@pytest.fixture(scope="module")
def device(machine):
    return machine.device()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
