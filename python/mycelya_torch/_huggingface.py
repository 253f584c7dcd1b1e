# SPDX-License-Identifier: AGPL-3.0-or-later
"""load_huggingface_model: a transformers model whose weights the machine
reads itself (from its HuggingFace cache, a path, or the Hub with its own
HF_TOKEN), so none of them crosses the client's link."""

import importlib
import os
import time

import torch

from . import _progress, _remote
from ._logging import logger
from ._machine import RemoteMachine

# from_pretrained's arguments that say where the checkpoint is, which the
# config's lookup takes too (others would become config attributes).
_LOCATION_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "trust_remote_code")


def load_on_machine(name_or_path, device, dtype, from_pretrained_kwargs):
    """Runs on the machine: the model on `device`, as the client rebuilds it."""
    import transformers

    location = {key: value for key, value in from_pretrained_kwargs.items() if key in _LOCATION_KWARGS}
    config = transformers.AutoConfig.from_pretrained(name_or_path, **location)
    # The class the checkpoint was saved from (GPT2LMHeadModel, not the bare GPT2Model).
    loader = next(
        (getattr(transformers, name) for name in config.architectures or () if hasattr(transformers, name)),
        transformers.AutoModel,
    )
    model = loader.from_pretrained(name_or_path, dtype=dtype, **from_pretrained_kwargs).to(device)
    cls = type(model)
    return {
        "class": (cls.__module__, cls.__qualname__),
        "config": model.config,
        "generation_config": getattr(model, "generation_config", None),
        "training": model.training,
        "parameters": dict(model.named_parameters()),
        "buffers": dict(model.named_buffers()),
    }


def _replace_all(model, attribute, loaded, kind):
    """Puts loaded[name] wherever model holds the tensor named `name`: a tensor
    two modules share (tied weights) is replaced by one, so they stay tied."""
    named = model.named_parameters() if attribute == "_parameters" else model.named_buffers()
    replacement = {}
    for name, old in named:
        if name not in loaded:
            raise RuntimeError(f"the machine's model has no {kind} {name}")
        replacement[id(old)] = loaded[name]
    for module in model.modules():
        table = getattr(module, attribute)
        for key, old in table.items():
            if old is not None:
                table[key] = replacement[id(old)]


def load_huggingface_model(
    name_or_path, machine, *, torch_dtype=None, device_type=None, **from_pretrained_kwargs
):
    """A transformers model loaded on `machine`: a local ``nn.Module`` whose
    parameters and buffers are mycelya tensors, the weights read by the
    machine itself, never uploaded from here.

    Args:
        name_or_path: a Hub model id (read through the machine's HuggingFace
            cache, downloading with the machine's ``HF_TOKEN`` when missing)
            or a folder on the machine.
        machine: a running ``RemoteMachine``.
        torch_dtype: the weights' dtype (``torch.float16``, ...); default: the checkpoint's.
        device_type: "cuda" or "cpu"; default: "cuda" where the machine has GPUs.
        **from_pretrained_kwargs: passed to ``from_pretrained`` on the machine
            (``revision=``, ``attn_implementation=``, ...).

    Tied weights stay tied. The machine needs transformers (``packages=["transformers"]``).
    Raises RuntimeError with the machine's traceback when loading fails there."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
        raise ValueError(f"name_or_path must be a model id or a folder, got {name_or_path!r}.")
    if not isinstance(machine, RemoteMachine):
        raise ValueError(f"machine must be a RemoteMachine, got {machine!r}.")
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"torch_dtype must be a torch.dtype such as torch.float16, got {torch_dtype!r}.")
    device = machine.device(device_type)
    name = os.fspath(name_or_path)
    started = time.monotonic()
    logger.info("loading %s on machine %s", name, machine.machine_id)
    with _progress.elapsed(f"loading {name} on machine {machine.machine_id}"):
        loaded = _remote.call(load_on_machine, (name, device, torch_dtype, from_pretrained_kwargs), {})
    module_name, qualname = loaded["class"]
    cls = getattr(importlib.import_module(module_name), qualname)
    # The structure only: no local memory for weights.
    with torch.device("meta"):
        model = cls._from_config(loaded["config"], dtype=torch_dtype)
    _replace_all(model, "_parameters", loaded["parameters"], "parameter")
    _replace_all(model, "_buffers", loaded["buffers"], "buffer")
    if loaded["generation_config"] is not None:
        model.generation_config = loaded["generation_config"]
    model.train(loaded["training"])
    logger.info("loaded %s on machine %s in %.1f s", name, machine.machine_id, time.monotonic() - started)
    return model
