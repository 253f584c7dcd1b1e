# SPDX-License-Identifier: AGPL-3.0-or-later
"""A nanoGPT-style training run: a tiny GPT, bf16 autocast, fused AdamW.

Written as nanoGPT's train.py is: torch.accelerator picks the device, batches
are cut on the CPU and pinned before a non-blocking copy, the LR follows a
warmup then a cosine decay (here through LambdaLR), gradients are clipped,
and a checkpoint saved mid-run is loaded into a fresh model and optimizer
that carry on. It prints one JSON line per step: the continuous run's steps
with "phase": "train", then the resumed run's with "phase": "resumed".
"""

import argparse
import json
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--out-dir", required=True, help="where the checkpoint goes")
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--resume-at", type=int, default=5, help="the step whose checkpoint is resumed")
parser.add_argument("--log-interval", type=int, default=2)
args = parser.parse_args()

device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
print(json.dumps({"device": str(device)}), flush=True)
vocab_size, block_size, n_embd, n_head, batch_size = 64, 16, 32, 4, 8
warmup_steps, learning_rate, min_lr = 3, 3e-3, 3e-4


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(n_embd, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        # Weight tying, as nanoGPT does: one parameter seen by two modules.
        self.wte.weight = self.lm_head.weight

    def forward(self, idx, targets):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def configure(model):
    # nanoGPT's split: weight decay on matrices only.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), fused=True)

    def lr_lambda(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        ratio = (step - warmup_steps) / max(1, args.steps - warmup_steps)
        return (min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)) / learning_rate

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


# The synthetic corpus lives on the CPU, as a memory-mapped dataset would.
data = torch.randint(vocab_size, (4096,), generator=torch.Generator().manual_seed(1337))


def get_batch(step):
    # Seeded by step so that a resumed run draws the batches the continuous run drew.
    generator = torch.Generator().manual_seed(step)
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    if device.type != "cpu":
        # pin_memory() needs an accelerator; the copy then overlaps the step.
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    else:
        x, y = x.to(device), y.to(device)
    return x, y


def train(model, optimizer, scheduler, start, stop, phase, checkpoint=None):
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type != "cpu":
        torch.accelerator.reset_peak_memory_stats()
    for step in range(start, stop):
        if checkpoint is not None and step == args.resume_at:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optim": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                },
                checkpoint,
            )
        x, y = get_batch(step)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"phase": phase, "step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr}
        if step % args.log_interval == 0 and device.type != "cpu":
            peak = torch.get_device_module(device).max_memory_allocated()
            # Parameters, gradients and AdamW's moments are all alive at the peak.
            assert peak >= param_bytes > 0, (peak, param_bytes)
            record["max_memory_allocated"] = peak
            torch.accelerator.reset_peak_memory_stats()
        print(json.dumps(record), flush=True)


torch.manual_seed(0)
model = GPT().to(device)
optimizer, scheduler = configure(model)
checkpoint = os.path.join(args.out_dir, "ckpt.pt")
train(model, optimizer, scheduler, 0, args.steps, "train", checkpoint)

# A fresh process would start here: new random weights, new optimizer, then the checkpoint.
torch.manual_seed(1)
model = GPT().to(device)
optimizer, scheduler = configure(model)
state = torch.load(checkpoint, map_location=device)
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optim"])
scheduler.load_state_dict(state["scheduler"])
train(model, optimizer, scheduler, state["step"], args.steps, "resumed")
