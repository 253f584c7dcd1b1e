# SPDX-License-Identifier: AGPL-3.0-or-later
"""Loopback fakes of cloud control planes, for tests."""

import os

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
