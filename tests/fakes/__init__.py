# SPDX-License-Identifier: AGPL-3.0-or-later
"""Loopback fakes of cloud control planes, for tests."""
