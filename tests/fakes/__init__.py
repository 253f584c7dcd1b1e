# SPDX-License-Identifier: AGPL-3.0-or-later
"""Loopback fakes of cloud control planes, for tests."""

import glob
import os
import signal
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The server the fakes' own tests run as their pods and sandboxes: a runfile
# beside the tests under Bazel; from a checkout, the built one.
SERVER = next(
    (
        path
        for path in (
            os.path.join(ROOT, "server", "mycelya-server"),
            os.path.join(ROOT, "bazel-bin", "server", "mycelya-server"),
        )
        if os.access(path, os.X_OK)
    ),
    "mycelya-server (not built)",
)
# Whether the fakes' own tests can run; under Bazel the server is always
# there, so a missing one fails rather than skips.
SERVER_BUILT = os.access(SERVER, os.X_OK) or "TEST_SRCDIR" in os.environ


def _built_wheel():
    for folder in ("python/wheel", "bazel-bin/python/wheel"):
        found = sorted(glob.glob(os.path.join(ROOT, folder, "mycelya_torch-*.whl")))
        if found:
            return found[-1]
    return None


# The wheel //python:wheel builds, which the Modal fake's images install: a
# runfile under Bazel (the target's data); from a checkout, the built one.
WHEEL = _built_wheel()


def free_port(avoid=()):
    """A loopback TCP port nothing listens on now, and none of `avoid`."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in avoid:
            return port


def signal_group(proc, signum):
    """Sends `signum` to the process group of `proc`, if any is left."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc, grace):
    """Stops a container: SIGTERM to the process group of `proc`, SIGKILL after `grace`
    seconds (at once for 0); reaps it and kills whatever else is left in its group."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            proc.wait(timeout=grace if grace > 0 else 5)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    signal_group(proc, signal.SIGKILL)
