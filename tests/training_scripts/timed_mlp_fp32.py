# SPDX-License-Identifier: AGPL-3.0-or-later
"""A torchtune-style fp32 run that times every step.

On an accelerator a step is timed with a pair of device events (torch.Event,
which follows the current accelerator), since the host returns long before
the device has finished; on the CPU, time.perf_counter is exact. Peak memory
comes from the device's own module (torch.get_device_module). It prints one
JSON line per step with the loss, the step's milliseconds and throughput.
"""

import argparse
import json
import time

import torch
from torch import nn
from torch.nn import functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--log-every-n-steps", type=int, default=2)
args = parser.parse_args()

device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
print(json.dumps({"device": str(device)}), flush=True)
batch_size, dim, hidden = 16, 24, 64

torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(dim, hidden),
    nn.LayerNorm(hidden),
    nn.SiLU(),
    nn.Linear(hidden, hidden),
    nn.LayerNorm(hidden),
    nn.SiLU(),
    nn.Linear(hidden, 1),
).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
# A fixed regression target, so that the loss falls.
teacher = torch.randn(dim, 1, generator=torch.Generator().manual_seed(7))
generator = torch.Generator().manual_seed(0)

memory = torch.get_device_module(device)
if device.type != "cpu":
    memory.reset_peak_memory_stats()
for step in range(args.steps):
    x = torch.randn(batch_size, dim, generator=generator)
    y = (x @ teacher).tanh()
    x, y = x.to(device), y.to(device)
    if device.type != "cpu":
        start, end = torch.Event(enable_timing=True), torch.Event(enable_timing=True)
        start.record()
    else:
        t0 = time.perf_counter()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type != "cpu":
        end.record()
        # elapsed_time needs both events to have completed on the device.
        end.synchronize()
        ms = start.elapsed_time(end)
    else:
        ms = (time.perf_counter() - t0) * 1000
    record = {"step": step, "loss": loss.item(), "ms": ms, "samples_per_s": batch_size / (ms / 1000)}
    if step % args.log_every_n_steps == 0 and device.type != "cpu":
        peak = memory.max_memory_allocated()
        assert peak > 0, peak
        record["max_memory_allocated"] = peak
        memory.reset_peak_memory_stats()
    print(json.dumps(record), flush=True)
