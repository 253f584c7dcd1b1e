# SPDX-License-Identifier: AGPL-3.0-or-later
"""The machines started and not stopped since, by machine id, in start order.

Its own module so that _machine (which adds to it) and _remote (which looks
machines up by device) both import it at the top, neither importing the other
to reach it."""

import threading

_running = {}
_running_lock = threading.Lock()


def add(machine):
    with _running_lock:
        _running[machine.machine_id] = machine


def remove(machine_id):
    with _running_lock:
        _running.pop(machine_id, None)


def machine_by_id(machine_id):
    """The started machine of that id (RuntimeError once it stopped)."""
    with _running_lock:
        machine = _running.get(machine_id)
    if machine is None:
        raise RuntimeError(f"Machine {machine_id} is not running.")
    return machine


def all_machines():
    """The machines started and not stopped since, in start order."""
    with _running_lock:
        return list(_running.values())
