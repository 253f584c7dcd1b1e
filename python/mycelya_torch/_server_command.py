# SPDX-License-Identifier: AGPL-3.0-or-later
"""The wheel's `mycelya-server` console command: runs the server binary that
ships inside this package (pip cannot install an ELF file as a script, because
the binary finds its libraries relative to its own folder)."""

import os
import sys


def main():
    binary = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mycelya-server")
    os.execv(binary, ["mycelya-server", *sys.argv[1:]])


if __name__ == "__main__":
    main()
