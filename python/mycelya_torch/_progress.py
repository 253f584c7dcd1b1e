# SPDX-License-Identifier: AGPL-3.0-or-later
"""tqdm bars for long work: copies of 64 MiB or more between the CPU and a
machine (core/transfer_progress.h), and model loads on a machine. They show
where tqdm is installed and stderr is a terminal; MYCELYA_PROGRESS=0 hides
them, MYCELYA_PROGRESS=1 shows them anywhere."""

import os
import sys
import threading

from . import _C


def _tqdm():
    setting = os.environ.get("MYCELYA_PROGRESS", "")
    if setting == "0" or (setting != "1" and not sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class _CopyBars:
    """The core's progress reporter: one bar per copy in flight."""

    def __init__(self, tqdm):
        self._tqdm = tqdm
        self._bars = {}
        self._lock = threading.Lock()

    def __call__(self, label, done, total):
        key = (threading.get_ident(), label)
        with self._lock:
            bar = self._bars.get(key)
            if bar is None:
                bar = self._bars[key] = self._tqdm(
                    desc=label, total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False
                )
        bar.update(done - bar.n)
        if done >= total:
            with self._lock:
                self._bars.pop(key, None)
            bar.close()


def install():
    """Shows copy bars from now on, where bars show (see the module's doc)."""
    tqdm = _tqdm()
    _C.set_progress_reporter(_CopyBars(tqdm) if tqdm is not None else None)


class elapsed:
    """A bar counting the seconds `description` takes, for work whose
    progress only the machine knows (a model load)."""

    def __init__(self, description):
        tqdm = _tqdm()
        self._bar = tqdm(desc=description, total=None, bar_format="{desc}: {elapsed}") if tqdm else None
        self._done = threading.Event()

    def __enter__(self):
        if self._bar is not None:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def _tick(self):
        while not self._done.wait(0.5):
            self._bar.refresh()

    def __exit__(self, *exc):
        if self._bar is not None:
            self._done.set()
            self._thread.join()
            self._bar.close()
        return False
