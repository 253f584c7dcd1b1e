# SPDX-License-Identifier: AGPL-3.0-or-later
"""The loopback RunPod fake, wired to the runpod provider through its environment variables."""

import os
import time

from fakes.runpod_fake import FakeRunPod
from server_process import server_binary

ENTRYPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "entrypoint.sh")


def start_fake_runpod():
    """A FakeRunPod whose pods run deploy/entrypoint.sh with this package's mycelya-server, and
    the environment the plugin reads (RUNPOD_API_KEY, RUNPOD_API_BASE_URL) pointing at it."""
    fake = FakeRunPod(server_binary=server_binary(), entrypoint=ENTRYPOINT)
    os.environ["RUNPOD_API_KEY"] = fake.api_key
    os.environ["RUNPOD_API_BASE_URL"] = fake.base_url
    return fake


def wait_until(condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
