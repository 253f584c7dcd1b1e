# SPDX-License-Identifier: AGPL-3.0-or-later
"""The line mycelya-server prints to stdout once it listens (proto/listening_line.h).

Imports nothing of the build, so that test_wheel, which tests an installed wheel, can use it.
"""

LISTENING_PREFIX = "mycelya-server listening on "


def listening_address(line):
    """The address in a listening line (a trailing newline allowed); None for any other line."""
    line = line.rstrip("\n")
    if not line.startswith(LISTENING_PREFIX) or len(line) == len(LISTENING_PREFIX):
        return None
    return line[len(LISTENING_PREFIX) :]
