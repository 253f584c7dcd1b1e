# SPDX-License-Identifier: AGPL-3.0-or-later
"""Logging controls. One level drives both the Python logger and the C++ core."""

import logging

from . import _C

logger = logging.getLogger("mycelya_torch")


def set_logging_level(level):
    """Sets the level, a logging constant (logging.INFO) or its name ("INFO")."""
    if isinstance(level, str):
        name = level.upper()
        if not isinstance(logging.getLevelName(name), int):
            raise ValueError(f"Unknown logging level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL.")
        level = logging.getLevelName(name)
    if not isinstance(level, int) or isinstance(level, bool):
        raise ValueError(f"Logging level must be an int or a level name, got {level!r}.")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mycelya_torch %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    _C.set_log_level(level)


def get_logging_level():
    """The current level as a number (logging.INFO == 20)."""
    return _C.log_level()


def enable_debug_logging():
    set_logging_level(logging.DEBUG)


def enable_info_logging():
    set_logging_level(logging.INFO)


def disable_logging():
    # Above CRITICAL: nothing is printed.
    set_logging_level(logging.CRITICAL + 10)
