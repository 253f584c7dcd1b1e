# SPDX-License-Identifier: AGPL-3.0-or-later
"""Runs a PyTorch script unchanged on a remote machine.

    python -m mycelya_torch.run [--provider P] [--gpu TYPE] [--gpu-count N]
                                [--option KEY=VALUE ...] script.py [args ...]

(or the `mycelya-run` command). It starts a machine, makes the machine's
default device the current accelerator device, so that
``torch.accelerator.current_accelerator()``, ``torch.device("mycelya")`` and
a script's own ``torch.accelerator`` device choice land there, and runs the
script as ``__main__`` with ``sys.argv`` set to its own arguments. The
machine stops when the script ends, raises or exits, and on Ctrl-C, so that a
cloud machine stops billing.
"""

import argparse
import os
import runpy
import sys

_PROG = "python -m mycelya_torch.run"


def _option(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _count(text):
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} is not a positive count")
    return count


def _parser(gpu_types):
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--provider", default="mock", help="the provider to start the machine with (default: mock)"
    )
    parser.add_argument(
        "--gpu", dest="gpu_type", choices=gpu_types, metavar="TYPE", help="GPU type: " + ", ".join(gpu_types)
    )
    parser.add_argument(
        "--gpu-count", type=_count, default=1, metavar="N", help="GPUs on the machine (default: 1)"
    )
    parser.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a provider option (repeatable), as RemoteMachine(..., KEY=VALUE) takes it",
    )
    parser.add_argument("script", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    return parser


def _say(text):
    print(f"mycelya-run: {text}", file=sys.stderr, flush=True)


def main(argv=None):
    import torch

    import mycelya_torch

    parser = _parser(list(mycelya_torch.GPU_TYPES))
    args = parser.parse_args(argv)
    if not os.path.isfile(args.script):
        parser.error(f"argument script: no such file: {args.script!r}")
    options = dict(args.option)
    try:
        machine = mycelya_torch.RemoteMachine(
            args.provider, args.gpu_type, gpu_count=args.gpu_count, **options
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        device = machine.device()
        torch.accelerator.set_device_index(device.index)
        remote = mycelya_torch._C.remote_device_name(device.index)
        _say(f"{args.script} runs on {machine!r}: {device} is its {remote}, the current accelerator device")
        sys.argv = [args.script, *args.args]
        # As `python script.py` does: the script's folder comes first on the path.
        sys.path[0] = os.path.dirname(os.path.abspath(args.script))
        runpy.run_path(args.script, run_name="__main__")
    except KeyboardInterrupt:
        _say("interrupted")
        _stop(machine)
        sys.exit(130)
    finally:
        _stop(machine)


def _stop(machine):
    if machine.running or machine.paused:
        machine.stop()
        _say(f"stopped {machine!r}")


if __name__ == "__main__":
    main()
