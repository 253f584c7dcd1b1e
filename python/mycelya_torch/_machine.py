# SPDX-License-Identifier: AGPL-3.0-or-later
"""RemoteMachine: one machine of a provider, and the devices it offers."""

import atexit
import math
import os

import torch

from . import _C, _registry, _remote, _remote_runtime
from ._logging import logger
from ._packages import check_packages


def _option_text(name, value):
    """A provider option's value as the text the provider reads (ValueError for other types)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ValueError(
        f"option {name}= must be a string, path, number or bool, got {type(value).__name__} {value!r}."
    )


def _check_arguments(provider, gpu_type, gpu_count, packages, idle_timeout):
    """Raises ValueError naming the first bad argument; returns packages as a list."""
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"provider must be a provider name such as 'mock', got {provider!r}.")
    if gpu_type is not None and not isinstance(gpu_type, str):
        raise ValueError(f"gpu_type must be a string or None, got {gpu_type!r}.")
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int):
        raise ValueError(f"gpu_count must be a positive integer, got {gpu_count!r}.")
    # Its values' rules are core's (core/gpu_types.h): ValueError from there.
    _C.validate_gpu_count(gpu_type or "", gpu_count)
    if idle_timeout is not None and (
        isinstance(idle_timeout, bool)
        or not isinstance(idle_timeout, (int, float))
        or not math.isfinite(idle_timeout)
        or idle_timeout <= 0
    ):
        raise ValueError(f"idle_timeout must be a positive, finite number of seconds, got {idle_timeout!r}.")
    return check_packages(packages)


class RemoteMachine:
    """A remote machine whose devices behave like local PyTorch devices.

    Args:
        provider: "mock" (in-process, CPU), or another installed provider
            (see ``mycelya_torch.available_providers()``).
        gpu_type: one of ``mycelya_torch.GPU_TYPES``, or None for a CPU-only machine.
        gpu_count: GPUs on the machine (needs a gpu_type unless it is 1).
        packages: pip packages the machine should have (providers that build images).
        idle_timeout: seconds without a message from this client after which
            the machine stops itself (a vanished client stops billing); its
            server first saves the storages where the provider can pause.
        start: start the machine now (default) or leave it to ``start()``.
        **options: the provider's own settings, e.g. ``address=`` and
            ``token=`` for "server" (see the README's section on each
            provider); a provider refuses names it does not know.

    Each bad argument raises ValueError naming it, before anything starts.
    """

    def __init__(
        self,
        provider,
        gpu_type=None,
        *,
        gpu_count=1,
        packages=None,
        idle_timeout=None,
        start=True,
        **options,
    ):
        packages = _check_arguments(provider, gpu_type, gpu_count, packages, idle_timeout)
        option_texts = {name: _option_text(name, value) for name, value in options.items()}
        # Validated before anything starts; unknown providers list what exists.
        _C.validate_gpu_type(gpu_type or "")
        self._machine = _C.Machine(
            provider, gpu_type or "", gpu_count, packages, float(idle_timeout or 0), option_texts
        )
        self.provider = provider
        self.gpu_type = gpu_type
        self.gpu_count = gpu_count
        self.packages = packages
        self.idle_timeout = idle_timeout
        self._installed = set()
        if start:
            self.start()

    @property
    def machine_id(self):
        return self._machine.machine_id

    @property
    def running(self):
        """Started, not paused, stopped or lost."""
        return self._machine.running

    @property
    def paused(self):
        return self._machine.paused

    def pause(self):
        """Saves every storage on the machine and ends it, so its provider
        bills no more (for a disk, at most). Its tensors stay valid: using one
        resumes the machine, as does ``resume()``.

        Raises RuntimeError when an earlier op failed (the machine keeps
        running), when the provider cannot pause, or when the machine was lost
        while saving: what it saved is then kept, and ``resume()`` names the
        rest in ``unsaved_storages``."""
        self._machine.pause()

    def resume(self):
        """Starts a paused machine again with every saved storage back, so
        tensors made before the pause hold the same values (no-op when it
        runs). Also brings back a machine lost after its server stopped by
        itself (``idle_timeout``), from what that server saved. Random
        generators start from the server's default seed: their states are not saved. Raises
        RuntimeError when it cannot, leaving the machine paused."""
        was_paused = self._machine.paused
        self._machine.resume()
        if was_paused:
            self._install_packages()

    @property
    def unsaved_storages(self):
        """Storage IDs the last resume could not bring back, because the
        pause before it was cut short; their tensors raise when used."""
        return list(self._machine.unsaved_storages)

    def start(self):
        """Starts the machine (no-op if it is running). Its devices get
        indices "mycelya:k" until it stops."""
        # Listed first: a machine whose start a Ctrl-C cut short is still
        # stopped at exit (a cloud machine would bill on).
        _registry.add(self)
        try:
            self._machine.start()
        except BaseException:
            # KeyboardInterrupt arrives once the C++ start returned: the
            # machine may run, with no handle left to the user.
            if self._machine.running:
                self._machine.stop()
            _registry.remove(self.machine_id)
            raise
        logger.info("machine %s started with devices %s", self.machine_id, self._machine.devices)
        self._install_packages()
        return self

    def _install_packages(self):
        # Where the provider built them into its image, pip finds them
        # installed already and reaches no index.
        self._installed = set()
        if self.packages:
            self.pip_install(*self.packages)

    def pip_install(self, *packages):
        """Installs pip packages into the machine's Python environment, where
        remote functions (``@mycelya_torch.remote``) run; on "mock" that is
        this process's own. Raises RuntimeError with pip's output when the
        install fails; the machine keeps working."""
        packages = check_packages(list(packages))
        if not packages:
            return
        logger.info("machine %s: pip install %s", self.machine_id, " ".join(packages))
        _remote.call(_remote_runtime.pip_install, (packages, self.device()), {})
        self._installed.update(packages)
        logger.info("machine %s: installed %s", self.machine_id, " ".join(packages))

    def _pip_install_once(self, packages):
        """pip_install of the packages not installed since the machine started (@remote(packages=))."""
        missing = [package for package in packages if package not in self._installed]
        if missing:
            self.pip_install(*missing)

    def stop(self):
        """Stops the machine. Its tensors can no longer be used (they raise
        "not running"), and its device indices go to machines started later."""
        try:
            self._machine.stop()
        finally:
            _registry.remove(self.machine_id)

    def devices(self):
        """The remote devices this machine offers, e.g. ['cuda:0', 'cpu']."""
        return list(self._machine.devices)

    def device(self, type=None, index=0):
        """A torch.device for one of the machine's devices.

        ``type`` defaults to "cuda" when the machine has GPUs, else "cpu".
        """
        if not (self._machine.running or self._machine.paused):
            raise RuntimeError(f"Machine {self.machine_id} is not running; call start() first.")
        if type is None:
            type = "cuda" if any(d.startswith("cuda") for d in self._machine.devices) else "cpu"
        if type not in ("cuda", "cpu"):
            raise ValueError(f"device type must be 'cuda' or 'cpu', got {type!r}.")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"device index must be a non-negative integer, got {index!r}.")
        return torch.device("mycelya", self._machine.device_index(type, index))

    def synchronize(self):
        """Waits until every queued op has run; raises errors of earlier ops."""
        self._machine.synchronize()

    @property
    def batches_sent(self):
        """Batches of queued ops sent to the machine so far."""
        return self._machine.batches_sent

    @property
    def bytes_uploaded(self):
        """Tensor bytes uploaded to the machine so far (CPU tensors copied to it)."""
        return self._machine.bytes_uploaded

    @property
    def round_trips(self):
        """Blocking requests made so far: sync points (.item(), .cpu(), ...)."""
        return self._machine.round_trips

    @property
    def early_reads(self):
        """Round trips answered ahead of the queued ops that do not touch the
        tensor read (small downloads such as loss.item(), where the provider
        supports it)."""
        return self._machine.early_reads

    def memory_stats(self):
        """What the machine holds for this session, asked in order after every
        queued op (a sync point): ``storages`` and ``bytes_in_use`` (counted
        against ``memory_limit``), ``generators`` made with torch.Generator;
        and what this process keeps for it: ``tracked_storages`` (storages
        whose last op it remembers) and ``interned_ops`` (op names sent once)."""
        return dict(self._machine.memory_stats())

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        state = "running" if self.running else "paused" if self.paused else "stopped"
        gpu = f", gpu_type={self.gpu_type!r}" if self.gpu_type else ""
        return f"RemoteMachine(provider={self.provider!r}{gpu}, machine_id={self.machine_id!r}, {state})"


def get_all_machines():
    """The machines started and not stopped since, in start order.

    A machine whose server was lost stays listed until you stop it, since it
    still holds its device indices (and, on a cloud provider, may still be
    billing); a machine created with ``start=False`` appears once its start begins.
    """
    return _registry.all_machines()


@atexit.register
def _stop_all():
    for machine in get_all_machines():
        try:
            machine.stop()
        except Exception as error:  # noqa: BLE001 - every machine gets its stop
            # At exit, say so: a cloud machine that did not stop may bill on.
            logger.warning("could not stop machine %s at exit: %s", machine.machine_id, error)
