"""Loading the next checkpoint into a built model: layouts compared, weights bit-identical to a fresh load."""

import json
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from lm_eval_fairdyn.core.reload import WeightLoader, checkpoint_layout


def test_layouts_compare_config_tensors_and_tokenizer_bytes(neox_dir, tmp_path):
    copy = shutil.copytree(neox_dir, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "_name_or_path": "elsewhere"}))
    assert checkpoint_layout(copy) == checkpoint_layout(neox_dir)  # the folder's name is not the model

    tokenizer = shutil.copytree(neox_dir, tmp_path / "tokenizer")
    settings = json.loads((tokenizer / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**settings, "pad_token": "<|endoftext|>"}))
    other = checkpoint_layout(tokenizer)
    assert (
        other.tokenizer != checkpoint_layout(neox_dir).tokenizer
        and other.tensors == checkpoint_layout(neox_dir).tensors
    )

    assert checkpoint_layout(tmp_path / "absent") is None
    assert checkpoint_layout("EleutherAI/pythia-160m") is None  # a hub name: never reloaded
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text("{}")
    assert checkpoint_layout(tmp_path / "bin") is None  # no safetensors


def test_loaded_weights_equal_a_fresh_load(tiny_checkpoints):
    """step0's model with step10's weights loaded into it holds what from_pretrained(step10) holds,
    under transformers' own names (GPT-NeoX's embed_out is lm_head once loaded)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints / "step0")
    loader = WeightLoader.for_model(model, checkpoint_layout(tiny_checkpoints / "step0"))
    assert loader is not None and "embed_out.weight" in loader.targets
    loader.load(tiny_checkpoints / "step10")
    fresh = AutoModelForCausalLM.from_pretrained(tiny_checkpoints / "step10").state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == fresh.keys()
    assert all(torch.equal(loaded[name], fresh[name]) for name in fresh)
    assert not torch.equal(
        loaded["lm_head.weight"],
        AutoModelForCausalLM.from_pretrained(tiny_checkpoints / "step0").state_dict()["lm_head.weight"],
    )


def test_a_checkpoint_that_leaves_a_tensor_unfilled_is_not_reloadable(neox_dir, tmp_path):
    partial = shutil.copytree(neox_dir, tmp_path / "partial")
    tensors = load_file(partial / "model.safetensors")
    del tensors["gpt_neox.final_layer_norm.bias"]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForCausalLM.from_pretrained(neox_dir)
    assert WeightLoader.for_model(model, checkpoint_layout(partial)) is None
    assert WeightLoader.for_model(model, checkpoint_layout(neox_dir)) is not None
