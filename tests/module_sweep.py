# SPDX-License-Identifier: AGPL-3.0-or-later
"""Runs PyTorch's ModuleInfo database on a mycelya device and on CPU, and compares.

The ModuleInfo sweep, beside the OpInfo one (tests/opinfo_sweep.py), whose
comparison, outcomes and table it shares. For each module in
``common_modules.module_db``, in float32 and float64 (those of the two the
ModuleInfo lists), in training and in eval mode, each sample input the
ModuleInfo offers is one *sample*: the module is built from the sample's
constructor arguments, moved to the device and the dtype as PyTorch's own
module tests move it, called on the sample's forward arguments, and
differentiated with fixed cotangents with respect to its inputs and its
parameters. It passes when the outputs, the gradients and the module's
buffers afterwards (running statistics) have the CPU's values, strides and
storage offsets. The draws a forward makes (dropout, a lazy module's
initialization at its first call) follow one seed on each side, so on a cpu
device they are the CPU's.

Each row of the table is one module in one dtype and mode, e.g.
``nn.BatchNorm2d float64 train``; its samples are numbered in the order the
ModuleInfo gives them. The table is ``docs/module-sweep.md``;
``test_module_sweep.py`` compares a fresh run against it. To rewrite it
after a change (on the mock provider):

    bazel run //tests:module_sweep_update
"""

import functools
import time

import opinfo_sweep
import torch
from lazy_seeding import skip_seeding_absent_backends
from opinfo_sweep import SEED, OpResult, compare_with_cpu, record
from torch.testing._internal.common_modules import module_db
from torch.utils._pytree import tree_flatten, tree_map

skip_seeding_absent_backends()

SWEEP_DTYPES = (torch.float32, torch.float64)
MODES = {"train": True, "eval": False}


def sweep_modules():
    """The ModuleInfos the sweep covers: all of module_db."""
    return list(module_db)


def configurations(info):
    """(row key, dtype, training) for each dtype and mode `info` is swept in."""
    return [
        (f"{info.name} {str(dtype).removeprefix('torch.')} {mode}", dtype, training)
        for dtype in SWEEP_DTYPES
        if dtype in info.dtypes
        for mode, training in MODES.items()
    ]


def module_samples(info, dtype, training):
    """The ModuleInputs `info` offers, made on CPU under the sweep's seed:
    the same inputs for both sides, whatever the device."""
    torch.manual_seed(SEED)
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)


def _moved(tree, device):
    """Fresh copies of the tensors in `tree` on `device`, keeping requires_grad."""

    def move(x):
        if not isinstance(x, torch.Tensor):
            return x
        return x.detach().to(device, copy=True).requires_grad_(x.requires_grad)

    return tree_map(move, tree)


def _differentiable(tensors):
    return [x for x in tensors if x.requires_grad and (x.is_floating_point() or x.is_complex())]


def run_sample(info, sample, dtype, training, device):
    """One sample on `device`: (outputs, gradients, buffers). The module is
    built on CPU and moved, as test_modules.py does it (m.to(device).to(dtype))."""
    constructor_args, constructor_kwargs = _moved(
        (sample.constructor_input.args, sample.constructor_input.kwargs), device
    )
    module = info.module_cls(*constructor_args, **constructor_kwargs)
    module.to(device).to(dtype)
    module.train(training)
    args, kwargs = _moved((sample.forward_input.args, sample.forward_input.kwargs), device)
    # Draws in the forward come from one seed on both sides: the CPU's
    # generator there, the device's here (the CPU's stream on a cpu device).
    torch.manual_seed(SEED + 1)
    outputs = [x for x in tree_flatten(module(*args, **kwargs))[0] if isinstance(x, torch.Tensor)]
    wrt = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor) and x.requires_grad]
    wrt += [p for p in module.parameters() if p.requires_grad]
    differentiable = _differentiable(outputs)
    gradients = []
    if differentiable and wrt:
        # Cotangents made on CPU from a fixed seed, so both runs use the same ones.
        generator = torch.Generator().manual_seed(SEED)
        cotangents = [
            torch.randn(x.shape, dtype=x.dtype, generator=generator).to(x.device) for x in differentiable
        ]
        gradients = list(torch.autograd.grad(differentiable, wrt, cotangents, allow_unused=True))
    return outputs, gradients, list(module.buffers())


def check_sample(info, sample, dtype, training, target):
    compare_with_cpu(
        lambda device: run_sample(info, sample, dtype, training, device), target, "forward and backward"
    )


def sweep_module(info, target, rotation=None):
    """row key -> OpResult for each dtype and mode of `info`: every sample,
    or with a Rotation only those it picks among all of the module's samples
    (rows in order, each row's samples in order)."""
    results, checks = {}, []
    for key, dtype, training in configurations(info):
        result = results[key] = OpResult()
        try:
            samples = module_samples(info, dtype, training)
        except Exception as exc:  # noqa: BLE001 -- a broken sample generator skips the row
            result.skipped += 1
            result.reasons[f"sample inputs fail: {type(exc).__name__}"] += 1
            continue
        checks += [
            (result, str(i), functools.partial(check_sample, info, sample, dtype, training, target))
            for i, sample in enumerate(samples)
        ]
    chosen = rotation.positions(len(checks)) if rotation else range(len(checks))
    for position in sorted(chosen):
        result, sample, check = checks[position]
        record(result, check, sample)
    return results


def format_table(results, provider):
    return opinfo_sweep.format_results(
        results,
        "ModuleInfo sweep",
        [
            "Every module in PyTorch's `module_db`, in float32 and float64, in training and eval",
            f"mode, run on a mycelya device (`{provider}` provider) and on CPU; see",
            "`tests/module_sweep.py` for what a sample checks (forward and backward: outputs,",
            "gradients of the inputs and parameters, buffers afterwards; values, strides and",
            "storage offsets). Rewritten by `bazel run //tests:module_sweep_update`;",
            "`//tests:module_sweep` (mock, every sample) and `//tests:module_sweep_local_cuda`",
            "(a rotation of the samples) fail when a sample raises, is wrong or has other strides",
            "where this table does not say so (*failing samples*: indices of the row's samples).",
        ],
        "module configurations",
        first_column="module dtype mode",
    )


def run_sweep(target, progress=None):
    results = {}
    modules = sweep_modules()
    start = time.monotonic()
    for i, info in enumerate(modules):
        results.update(sweep_module(info, target))
        if progress and (i + 1) % 10 == 0:
            progress(f"{i + 1}/{len(modules)} modules, {time.monotonic() - start:.0f} s")
    return results


def main():
    opinfo_sweep.update_table(__doc__.splitlines()[0], "module-sweep.md", run_sweep, format_table)


if __name__ == "__main__":
    main()
