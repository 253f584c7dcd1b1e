# SPDX-License-Identifier: AGPL-3.0-or-later
"""Keeps torch.manual_seed cheap in the test processes.

On a host without CUDA, XPU or MTIA, torch.manual_seed queues a lazy seeding
call for each of those backends, with a formatted Python stack trace each: 2 ms
per call here. The OpInfo iterators seed before every sample, so that was 70%
of the sweep's time. These processes never initialize those backends, so the
queued calls could never run: seeding them is skipped.
"""

import torch


def skip_seeding_absent_backends():
    for backend in (torch.cuda, torch.xpu, torch.mtia):
        if not backend.is_available():
            backend.manual_seed = lambda seed: None
            backend.manual_seed_all = lambda seed: None
