# SPDX-License-Identifier: AGPL-3.0-or-later
"""A Hugging Face Trainer-style run: fp16 autocast with a GradScaler.

A tiny encoder (nn.MultiheadAttention, LayerNorm) classifies synthetic
sequences fed by a DataLoader that pins its batches when there is an
accelerator. The step is the Trainer's: gradient accumulation, then
scaler.unscale_ before clip_grad_norm_, scaler.step and scaler.update, and
the OneCycleLR scheduler advances only when the scaler did not skip the
optimizer step. AdamW uses the foreach implementation. It prints one JSON
line per optimizer step.
"""

import argparse
import json

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=14)
parser.add_argument("--gradient-accumulation-steps", type=int, default=2)
parser.add_argument("--logging-steps", type=int, default=3)
args = parser.parse_args()

device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
print(json.dumps({"device": str(device)}), flush=True)
seq_len, d_model, n_heads, n_classes, batch_size = 12, 32, 4, 5, 8


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model))
        self.ln_2 = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, n_classes)

    def forward(self, inputs, padding_mask, labels):
        h = self.embed(inputs)
        attended, _ = self.attn(h, h, h, key_padding_mask=padding_mask, need_weights=False)
        h = self.ln_1(h + attended)
        h = self.ln_2(h + self.ffn(h))
        # Mean over the tokens that are not padding.
        keep = (~padding_mask).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1)
        return F.cross_entropy(self.classifier(pooled), labels)


# A synthetic dataset on the CPU: features, a padding mask and labels.
generator = torch.Generator().manual_seed(0)
n_examples = args.steps * args.gradient_accumulation_steps * batch_size
inputs = torch.randn(n_examples, seq_len, 6, generator=generator)
lengths = torch.randint(4, seq_len + 1, (n_examples,), generator=generator)
padding_mask = torch.arange(seq_len).expand(n_examples, seq_len) >= lengths.unsqueeze(1)
labels = torch.randint(0, n_classes, (n_examples,), generator=generator)
loader = DataLoader(
    TensorDataset(inputs, padding_mask, labels),
    batch_size=batch_size,
    shuffle=True,
    generator=torch.Generator().manual_seed(1),
    pin_memory=device.type != "cpu",
)

torch.manual_seed(0)
model = Encoder().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, foreach=True)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=args.steps, pct_start=0.3)
# A short growth interval so that this short run sees the scale grow until fp16
# gradients overflow, and the skipped step that follows.
scaler = torch.amp.GradScaler(device.type, growth_interval=3)

if device.type != "cpu":
    torch.accelerator.reset_peak_memory_stats()
step, running_loss = 0, 0.0
for micro_step, (x, mask, y) in enumerate(loader):
    # The loader pinned the batch, so the copy need not wait for the device.
    x, mask, y = (t.to(device, non_blocking=True) for t in (x, mask, y))
    with torch.autocast(device_type=device.type, dtype=torch.float16):
        loss = model(x, mask, y) / args.gradient_accumulation_steps
    scaler.scale(loss).backward()
    running_loss += loss.item()
    if (micro_step + 1) % args.gradient_accumulation_steps:
        continue
    # Unscale first so that the clipping threshold applies to the true gradients.
    scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    # A step skipped for inf/nan gradients must not advance the schedule.
    optimizer_was_run = scaler.get_scale() >= scale_before
    if optimizer_was_run:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    record = {
        "step": step,
        "loss": running_loss,
        "grad_norm": grad_norm.item(),
        "scale": scale_before,
        "optimizer_was_run": optimizer_was_run,
        "lr": scheduler.get_last_lr()[0],
    }
    if step % args.logging_steps == 0 and device.type != "cpu":
        record["max_memory_allocated"] = torch.accelerator.max_memory_allocated()
        record["memory_allocated"] = torch.accelerator.memory_allocated()
        assert record["max_memory_allocated"] >= record["memory_allocated"] > 0, record
        torch.accelerator.reset_peak_memory_stats()
    print(json.dumps(record), flush=True)
    step, running_loss = step + 1, 0.0
    if step == args.steps:
        break
