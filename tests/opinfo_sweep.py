# SPDX-License-Identifier: AGPL-3.0-or-later
"""Runs PyTorch's OpInfo database on a mycelya device and on CPU, and compares.

For each OpInfo and each of its float32 sample inputs, one *sample* is checked:
the op itself, its in-place variant and its ``out=`` variant where the OpInfo
has them, and the gradients of its differentiable inputs. The first two samples
in each other dtype the OpInfo lists for CPU are checked too (the op itself). A sample passes when
every check that works on CPU gives the same result on mycelya
(``torch.testing.assert_close``); it *raised* when mycelya raised where CPU did
not, and it is *wrong* when mycelya returned values that differ from CPU's.
Samples that fail on CPU, and values that differ between two CPU runs
(``empty``-like ops), are skipped with the reason.

The table this produces is ``docs/opinfo-sweep.md``; ``test_opinfo_sweep.py``
compares a fresh run against it. To rewrite the table after a change that makes
more samples pass (on the mock provider):

    bazel run //tests:opinfo_sweep_update
"""

import argparse
import collections
import contextlib
import dataclasses
import os
import re
import sys
import time
import warnings

import torch
from lazy_seeding import skip_seeding_absent_backends
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.opinfo.core import SampleInput
from torch.utils._pytree import tree_flatten, tree_map

skip_seeding_absent_backends()

SWEEP_DTYPE = torch.float32
# Every other dtype an OpInfo lists for CPU: this many samples, forward only.
OTHER_DTYPE_SAMPLES = 2
SEED = 0
# Ops whose outputs are uninitialized memory: only shape and dtype are compared
# (as for every OpInfo marked has_nondeterministic_output).
UNINITIALIZED_OPS = {
    "empty",
    "empty_like",
    "empty_permuted",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
}


# Ops whose accumulation dtype PyTorch picks by device type ("auto" policy):
# on half and bfloat16 a mycelya device and the CPU round differently by design.
DEVICE_POLICY_OPS = {"nn.functional.linear_cross_entropy"}


def _values_comparable(op):
    return op.name not in UNINITIALIZED_OPS and not op.has_nondeterministic_output


@dataclasses.dataclass
class OpResult:
    passed: int = 0
    raised: int = 0
    wrong: int = 0
    skipped: int = 0
    # Reason -> how many samples it covers, for raised, wrong and skipped.
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def total(self):
        return self.passed + self.raised + self.wrong + self.skipped


class Skip(Exception):
    """A check that cannot be compared (it fails on CPU, or CPU is not deterministic)."""


class Wrong(Exception):
    """mycelya returned values that differ from CPU's."""


def op_key(op):
    return op.name + ("." + op.variant_test_name if op.variant_test_name else "")


def sweep_ops():
    """The OpInfos the sweep covers: every one that supports float32 on CPU."""
    return [op for op in op_db if SWEEP_DTYPE in op.supported_dtypes("cpu")]


def _short(exc):
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Storage IDs, addresses and sizes vary; keep reasons comparable across runs.
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    return f"{type(exc).__name__}: {text[:160]}"


def _detached(sample):
    return sample.transform(lambda x: x.detach() if isinstance(x, torch.Tensor) else x)


def _clone_to(sample, device, move_cpu_tensors=False):
    """A SampleInput with fresh copies of its tensors (keeping requires_grad):
    those on a mycelya device go to `device`, and so does a `device=`
    argument (factory ops). CPU tensors in a sample made on a mycelya device
    are CPU on purpose (tensor_split's indices) and stay there, unless
    move_cpu_tensors."""

    def move(x):
        if not isinstance(x, torch.Tensor):
            return x
        stays = x.device.type == "cpu" and not move_cpu_tensors
        moved = x.detach().to(device="cpu" if stays else device, copy=True)
        if x.requires_grad:
            moved.requires_grad_(True)
        return moved

    kwargs = tree_map(move, sample.kwargs)
    if "device" in kwargs and torch.device(kwargs["device"]).type != "cpu":
        kwargs["device"] = device
    return SampleInput(
        tree_map(move, sample.input),
        args=tree_map(move, sample.args),
        kwargs=kwargs,
        output_process_fn_grad=sample.output_process_fn_grad,
        broadcasts_input=sample.broadcasts_input,
        name=sample.name,
    )


def _to_cpu(tree):
    return tree_map(lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, tree)


def _compare(actual, expected, what, values=True):
    """Raises Wrong when `actual` (moved to CPU) differs from `expected`; with
    values=False, only in shape and dtype."""
    actual_leaves, actual_spec = tree_flatten(_to_cpu(actual))
    expected_leaves, expected_spec = tree_flatten(expected)
    if actual_spec != expected_spec:
        raise Wrong(f"{what}: output structure {actual_spec} != {expected_spec}")
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        try:
            if isinstance(e, torch.Tensor) and not values:
                if (a.shape, a.dtype) != (e.shape, e.dtype):
                    raise AssertionError(f"{a.shape}, {a.dtype} != {e.shape}, {e.dtype}")
            elif isinstance(e, torch.Tensor):
                torch.testing.assert_close(a, e, equal_nan=True, check_stride=False)
            elif isinstance(e, float):
                torch.testing.assert_close(a, e, equal_nan=True)
            elif a != e:
                raise AssertionError(f"{a!r} != {e!r}")
        except AssertionError as exc:
            raise Wrong(f"{what}: {str(exc).strip().splitlines()[0][:160]}") from None


def _same_on_cpu(run):
    """Runs `run` twice on CPU under one seed; Skip when the two results differ."""
    torch.manual_seed(SEED)
    first = _to_cpu(run())
    torch.manual_seed(SEED)
    second = _to_cpu(run())
    try:
        _compare(second, first, "cpu")
    except Wrong:
        raise Skip("values differ between two CPU runs (uninitialized or random)") from None
    return first


def _cpu_or_skip(run):
    try:
        return _same_on_cpu(run)
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001 -- any CPU failure means "not comparable"
        raise Skip(f"fails on CPU: {_short(exc)[:90]}") from None


def _on_device(run, device):
    torch.manual_seed(SEED)
    result = run()
    torch.mycelya.synchronize(device)
    return result


def _depends_on_seed(run, expected):
    """Whether `run` on CPU gives other values under another seed (a random op)."""
    torch.manual_seed(SEED + 1)
    try:
        _compare(_to_cpu(run("cpu")), expected, "cpu")
    except Wrong:
        return True
    return False


def _compare_with_cpu(run, device, what, values=True):
    """Compares run(device) with run("cpu"). A random op (its CPU values
    follow the seed) must be reproducible on the device under one seed and
    match the CPU's shapes and dtypes: a machine's random stream need not be
    the CPU's (it is a GPU's, or the server's own)."""
    if not values:
        _compare(_on_device(lambda: run(device), device), _to_cpu(run("cpu")), what, False)
        return
    expected = _cpu_or_skip(lambda: run("cpu"))
    if expected is None:
        return
    actual = _to_cpu(_on_device(lambda: run(device), device))
    try:
        _compare(actual, expected, what)
    except Wrong:
        if not _depends_on_seed(run, expected):
            raise
        again = _to_cpu(_on_device(lambda: run(device), device))
        _compare(again, actual, f"{what} (random, same seed twice)")
        _compare(actual, expected, f"{what} (random)", False)


def _call(fn, sample, **extra):
    return fn(sample.input, *sample.args, **sample.kwargs, **extra)


def _check_forward(op, sample, device):
    _compare_with_cpu(
        lambda target: _call(op, _clone_to(sample, target)), device, "forward", _values_comparable(op)
    )


def _check_inplace(op, sample, device):
    def run(target):
        # In-place ops on leaves that require grad are not allowed; compare values only.
        cloned = _detached(_clone_to(sample, target))
        _call(op.inplace_variant, cloned)
        return cloned.input

    _compare_with_cpu(run, device, "in-place")


def _check_out(op, sample, device):
    def run(target):
        with torch.no_grad():
            reference = _call(op, _clone_to(sample, "cpu"))
        # Filled, not empty: where a kernel leaves part of `out` unwritten (CPU's
        # ihfftn can), both sides then show the same fill instead of garbage.
        outs = tree_map(
            lambda x: torch.full_like(x, 1, device=target) if isinstance(x, torch.Tensor) else x, reference
        )
        cloned = _detached(_clone_to(sample, target))
        _call(op, cloned, out=outs)
        return outs

    _compare_with_cpu(run, device, "out=", _values_comparable(op))


def _grad_inputs(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor) and x.requires_grad]


def _check_grad(op, sample, device):
    def run(target):
        cloned = _clone_to(sample, target)
        inputs = _grad_inputs([cloned.input, cloned.args, cloned.kwargs])
        outputs = sample.output_process_fn_grad(_call(op, cloned))
        outputs = [
            x
            for x in tree_flatten(outputs)[0]
            if isinstance(x, torch.Tensor) and x.requires_grad and (x.is_floating_point() or x.is_complex())
        ]
        if not inputs or not outputs:
            return None
        # Cotangents made on CPU from a fixed seed, so both runs use the same ones.
        generator = torch.Generator().manual_seed(SEED)
        cotangents = [torch.randn(x.shape, dtype=x.dtype, generator=generator).to(x.device) for x in outputs]
        return torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)

    _compare_with_cpu(run, device, "gradient")


def check_sample(op, sample, device):
    """Runs every applicable check of one sample. Raises Skip, Wrong, or what mycelya raised.

    Attention on a machine's cpu device picks the backend CPU picks, so the
    CPU reference runs as it is."""
    _check_forward(op, sample, device)
    if op.inplace_variant is not None:
        with contextlib.suppress(Skip):
            _check_inplace(op, sample, device)
    if op.supports_out:
        with contextlib.suppress(Skip):
            _check_out(op, sample, device)
    if op.supports_autograd:
        with contextlib.suppress(Skip):
            _check_grad(op, sample, device)


def _samples(op, device, dtype=SWEEP_DTYPE, requires_grad=None):
    """The op's samples, made on the mycelya device as PyTorch's own device
    tests make them; made on CPU and moved when that fails."""
    if requires_grad is None:
        requires_grad = op.supports_autograd
    try:
        torch.manual_seed(SEED)
        return list(op.sample_inputs(device, dtype, requires_grad=requires_grad))
    except Exception:  # noqa: BLE001 -- a generator that needs what mycelya lacks
        torch.manual_seed(SEED)
        samples = op.sample_inputs("cpu", dtype, requires_grad=requires_grad)
        return [_clone_to(sample, device, move_cpu_tensors=True) for sample in samples]


def _record(result, check, prefix=""):
    """Runs `check` and counts its outcome in `result`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check()
        result.passed += 1
    except Skip as exc:
        result.skipped += 1
        result.reasons[f"skipped{prefix}: {exc}"] += 1
    except Wrong as exc:
        result.wrong += 1
        result.reasons[f"wrong{prefix}: {exc}"] += 1
    except Exception as exc:  # noqa: BLE001 -- recorded as raised, with its message
        result.raised += 1
        result.reasons[f"raised{prefix}: {_short(exc)}"] += 1


def _sweep_other_dtypes(op, device, result):
    """The forward of the first OTHER_DTYPE_SAMPLES samples in every other
    dtype the OpInfo lists for CPU."""
    for dtype in sorted(op.supported_dtypes("cpu") - {SWEEP_DTYPE}, key=str):
        prefix = f" ({str(dtype).removeprefix('torch.')})"
        if op.name in DEVICE_POLICY_OPS and dtype in (torch.float16, torch.bfloat16):
            result.skipped += 1
            result.reasons[f"skipped{prefix}: accumulation dtype chosen by device type"] += 1
            continue
        try:
            samples = _samples(op, device, dtype, requires_grad=False)[:OTHER_DTYPE_SAMPLES]
        except Exception as exc:  # noqa: BLE001 -- a broken sample generator skips the dtype
            result.skipped += 1
            result.reasons[f"skipped{prefix}: sample inputs fail: {type(exc).__name__}"] += 1
            continue
        for sample in samples:
            _record(result, lambda sample=sample: _check_forward(op, sample, device), prefix)


def sweep_op(op, device, samples_per_op=None):
    """Every float32 sample of `op` and the first samples in its other dtypes;
    with `samples_per_op`, only that many float32 samples and no other dtype."""
    result = OpResult()
    try:
        samples = _samples(op, device)
    except Exception as exc:  # noqa: BLE001 -- a broken sample generator skips the op
        result.skipped += 1
        result.reasons[f"sample inputs fail: {type(exc).__name__}"] += 1
        return result
    for sample in samples[:samples_per_op]:
        _record(result, lambda sample=sample: check_sample(op, sample, device))
    if samples_per_op is None:
        _sweep_other_dtypes(op, device, result)
    return result


# The table: one row per OpInfo, parsed back for the regression check.
_COLUMNS = ("op", "samples", "passed", "raised", "wrong", "skipped", "reasons")


def totals(results):
    counts = collections.Counter()
    for result in results.values():
        counts.update(passed=result.passed, raised=result.raised, wrong=result.wrong, skipped=result.skipped)
    compared = counts["passed"] + counts["raised"] + counts["wrong"]
    counts["rate"] = counts["passed"] / compared if compared else 1.0
    return counts


def format_table(results, provider):
    total = totals(results)
    samples = sum(r.total for r in results.values())
    lines = [
        "# OpInfo sweep",
        "",
        "Every OpInfo in PyTorch's `op_db` that supports float32 on CPU, run on a mycelya",
        f"device (`{provider}` provider) and on CPU; see `tests/opinfo_sweep.py` for what a",
        "sample checks (forward, in-place, `out=`, gradients). Rewritten by",
        "`bazel run //tests:opinfo_sweep_update`; `//tests:opinfo_sweep` (mock) and",
        "`//tests:opinfo_sweep_local_cuda` fail when an op passes fewer samples than here.",
        "",
        f"**{len(results)} ops, {samples} samples: {total['passed']} passed, {total['raised']} raised, "
        f"{total['wrong']} wrong, {total['skipped']} skipped. Pass rate of the samples that run on "
        f"CPU: {100 * total['rate']:.2f}%.**",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for key in sorted(results):
        r = results[key]
        reasons = "; ".join(f"{n}x {text}" for text, n in r.reasons.most_common())
        reasons = reasons.replace("|", "/").replace("\n", " ")
        lines.append(f"| {key} | {r.total} | {r.passed} | {r.raised} | {r.wrong} | {r.skipped} | {reasons} |")
    return "\n".join(lines) + "\n"


def parse_table(text):
    """op -> OpResult (counts only) from a table format_table wrote."""
    results = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[1].isdigit():
            continue
        results[cells[0]] = OpResult(*(int(cell) for cell in cells[2:6]))
    return results


def run_sweep(device, progress=None):
    results = {}
    ops = sweep_ops()
    start = time.monotonic()
    for i, op in enumerate(ops):
        results[op_key(op)] = sweep_op(op, device)
        if progress and (i + 1) % 50 == 0:
            progress(f"{i + 1}/{len(ops)} ops, {time.monotonic() - start:.0f} s")
    return results


def main():
    import mycelya_torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default="mock")
    default_out = os.path.join(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."), "docs", "opinfo-sweep.md")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()
    with mycelya_torch.RemoteMachine(args.provider) as machine:
        results = run_sweep(machine.device(), progress=lambda text: print(text, file=sys.stderr, flush=True))
    with open(args.out, "w") as out:
        out.write(format_table(results, args.provider))
    total = totals(results)
    print(f"wrote {args.out}: {total['passed']} passed, {total['raised']} raised, {total['wrong']} wrong")


if __name__ == "__main__":
    main()
