"""Loading the next checkpoint's weights into a model object that is already built.

A sweep evaluates many checkpoints of one training run: same architecture, same tokenizer,
other weights. Building the model and the tokenizer again for each (``from_pretrained``, lm-eval's
``HFLM``) costs more than loading the weights, and throws away the tokenizations. Two checkpoint
folders are interchangeable for a built model when their :class:`CheckpointLayout` is equal:

- ``config.json`` without ``_name_or_path`` and ``transformers_version``;
- the name, dtype and shape of every tensor in the ``*.safetensors`` files (read from their
  headers, not their data);
- the bytes of the tokenizer files (``TOKENIZER_FILES``): never assumed equal, hashed.

:class:`WeightLoader` then copies the tensors of the next folder into the model's parameters under
the names ``from_pretrained`` gave them (transformers renames some on load, e.g. GPT-NeoX's
``embed_out`` to ``lm_head``). Only a pure renaming is replayed: a model whose loading converts
tensors (fuses, splits, permutes) or leaves a parameter without a checkpoint tensor is not
reloadable, and is built afresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import xxhash

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)
# config.json fields that name the folder or the writer, not the model.
_CONFIG_NAMES = ("_name_or_path", "transformers_version")


@dataclass(frozen=True)
class CheckpointLayout:
    """What must be equal for one built model to evaluate two checkpoint folders."""

    config: str  # canonical JSON of config.json without _CONFIG_NAMES
    tensors: tuple[tuple[str, str, str, tuple[int, ...]], ...]  # (file, name, dtype, shape)
    tokenizer: str  # xxh3-128 of the tokenizer files' names and bytes


def tokenizer_files_hash(folder: str | Path) -> str:
    """xxh3-128 over the name and bytes of each of ``TOKENIZER_FILES`` present in ``folder``."""
    digest = xxhash.xxh3_128()
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(f"{name}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def checkpoint_layout(folder: str | Path) -> CheckpointLayout | None:
    """The layout of a local checkpoint folder; None when it is not one (a hub name, no
    ``config.json``, weights not in safetensors)."""
    from safetensors import safe_open

    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not folder.is_dir() or not (folder / "config.json").is_file() or not weights:
        return None
    config = json.loads((folder / "config.json").read_text())
    for name in _CONFIG_NAMES:
        config.pop(name, None)
    tensors = []
    for path in weights:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                tensors.append((path.name, name, piece.get_dtype(), tuple(piece.get_shape())))
    return CheckpointLayout(json.dumps(config, sort_keys=True), tuple(sorted(tensors)), tokenizer_files_hash(folder))


class WeightLoader:
    """Copies a checkpoint folder's safetensors into a model built by ``from_pretrained``.

    ``targets`` maps each checkpoint tensor name to the model's parameter or buffer; it is the
    inverse of the renaming transformers applied when it built the model
    (``revert_weight_conversion``), taken only when that is a pure renaming that covers every
    tensor of the model. :meth:`for_model` returns None otherwise.
    """

    def __init__(self, targets: dict):
        self.targets = targets

    @classmethod
    def for_model(cls, model, layout: CheckpointLayout) -> WeightLoader | None:
        from transformers.core_model_loading import revert_weight_conversion

        state = model.state_dict(keep_vars=True)
        saved = revert_weight_conversion(model, dict(state))
        by_storage = {tensor.data_ptr(): tensor for tensor in state.values()}
        targets = {}
        for name, tensor in saved.items():
            target = by_storage.get(tensor.data_ptr())
            if target is None or target.shape != tensor.shape:
                return None  # a converted tensor, not a renamed one
            targets[name] = target
        in_files = {name for _, name, _, _ in layout.tensors}
        if not in_files <= set(targets):
            return None  # a checkpoint tensor the renaming does not place
        covered = {targets[name].data_ptr() for name in in_files}
        if covered != set(by_storage):
            return None  # a model tensor no checkpoint tensor fills (tied ones share storage)
        return cls({name: targets[name] for name in in_files})

    def load(self, folder: str | Path) -> None:
        """Copy every tensor of the folder's safetensors files into its model tensor (cast to
        the model's dtype, as ``from_pretrained`` casts with ``dtype=``)."""
        import torch
        from safetensors import safe_open

        with torch.no_grad():
            for path in sorted(Path(folder).glob("*.safetensors")):
                with safe_open(str(path), framework="pt") as handle:
                    for name in handle.keys():
                        self.targets[name].copy_(handle.get_tensor(name))
