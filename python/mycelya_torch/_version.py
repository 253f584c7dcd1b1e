# SPDX-License-Identifier: AGPL-3.0-or-later
"""The package's version: the one place it is written (the wheel reads it too)."""

__version__ = "0.1.0"
