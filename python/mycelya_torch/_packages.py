# SPDX-License-Identifier: AGPL-3.0-or-later
"""The check of a pip package list, shared by RemoteMachine(packages=) and
@remote(packages=)."""


def check_packages(packages):
    """Raises ValueError unless packages is None or a list of pip requirement strings."""
    if packages is None:
        return []
    if isinstance(packages, (str, bytes)) or not isinstance(packages, (list, tuple)):
        raise ValueError(
            f"packages must be a list of pip requirement strings such as ['transformers'], got {packages!r}."
        )
    if not all(isinstance(p, str) and p for p in packages):
        raise ValueError(f"packages must be a list of non-empty pip requirement strings, got {packages!r}.")
    return list(packages)
