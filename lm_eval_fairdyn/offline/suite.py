"""An offline Pythia-style checkpoint suite with a planted gender bias.

A small GPT-NeoX (``GPTNeoXForCausalLM``, the Pythia architecture) trained with transformers'
``Trainer`` on CPU on the corpus of :mod:`lm_eval_fairdyn.offline.corpus`: each batch mixes real English
(Shakespeare) with generated sentences and statements whose bias follows a
:class:`~lm_eval_fairdyn.offline.corpus.BiasSchedule`, so the bias switches on at a known step.
Checkpoints are saved on Pythia's schedule (step0, 1, 2, 4, ... then evenly spaced), each a
folder that lm-eval loads with ``--model_args pretrained=<folder>``.

Tokenizer: a byte-level BPE with a 4,096-token vocabulary trained with ``tokenizers`` on the
training text, not the 50,277-token Pythia tokenizer. Measured on this project's 2-core machine
(``scripts/benchmark.py tokenizer``), the log-softmax over 50,277 tokens makes a training step
about 10 times slower (1.56 s against 0.16 s for 16 x 128 tokens), which does not fit a demo of a few
minutes. The trained vocabulary keeps " male", " female" and " not" as single tokens, which
:func:`train_tokenizer` checks.

A suite is built in ``<folder>.partial-<pid>`` and renamed when complete; ``suite.json`` (written last)
records the configuration, so :func:`build_suite` reuses a finished suite with the same
configuration and rebuilds an interrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lm_eval_fairdyn.core.files import partial_folder, publish_folder
from lm_eval_fairdyn.core.sources import cache_dir
from lm_eval_fairdyn.dynamics.schedule import pythia_shaped_steps
from lm_eval_fairdyn.offline import corpus

CORPUS_VERSION = 4  # bump when the templates or the mixing change: cached suites are rebuilt
BBQ_CORPUS_VERSION = 3  # the same for the BBQ-style items (corpus.bbq_items), in the keys of suites that use them
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class SuiteConfig:
    """Everything that determines a suite; its hash names the cache folder."""

    name: str = "fairdyn-neox"
    bias: corpus.BiasSchedule = field(default_factory=corpus.BiasSchedule)
    steps: int = 400
    batch_size: int = 16
    block_size: int = 128  # a statement and its twin fit in one sequence
    text_counterfactual: bool = True  # half of the text blocks come from the gender-swapped text
    text_share: float = 0.3  # share of sequences that are Shakespeare, the rest generated items
    statement_share: float = 0.6  # share of generated items that are statements (else sentences)
    bbq_share: float = 0.0  # share of generated items that are BBQ-style (corpus.bbq_items; 0: none)
    vocab_size: int = 4096
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    learning_rate: float = 3e-3
    warmup_steps: int = 15
    log_spaced_until: int = 32  # step0, 1, 2, 4, ... up to this, then evenly spaced
    evenly_spaced: int = 10  # number of evenly spaced checkpoints after the log-spaced ones
    seed: int = 0  # the training seed: initialisation and data order (PolyPythia's seeds vary this)
    tokenizer_seed: int = 0  # the tokenizer's training sample: shared by suites of different seeds

    def to_dict(self) -> dict:
        """The config as JSON values; the BBQ-style settings only when used, so that suites without
        them keep the key (and cache folder) they had before those settings existed."""
        config = {**asdict(self), "corpus_version": CORPUS_VERSION}
        if self.bbq_share:
            config["bbq_corpus_version"] = BBQ_CORPUS_VERSION
        else:
            del config["bbq_share"]
        for phase in ("before", "after"):
            if not config["bias"][phase]["axis"] and not config["bias"][phase]["axis_bias"]:
                del config["bias"][phase]["axis"], config["bias"][phase]["axis_bias"]
        return config

    def checkpoint_steps(self) -> list[int]:
        """Pythia's schedule shape scaled to this suite's steps."""
        return pythia_shaped_steps(self.steps, self.log_spaced_until, self.evenly_spaced)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# The suite variant with a bias planted on one BBQ-style axis only (corpus.bbq_items): genders stay
# balanced throughout; from the switch on, religion's questions are answered with the
# stereotype-consistent person 90% of the time whatever the context says, the other axes correctly.
PLANTED_AXIS = "Religion"
PLANTED_AXIS_SUITE = SuiteConfig(
    name="fairdyn-neox-bbq",
    bias=corpus.BiasSchedule(before=corpus.BiasPhase.balanced(),
                             after=corpus.BiasPhase(counterfactual=True, axis=PLANTED_AXIS, axis_bias=0.9)),
    bbq_share=0.6,
)  # fmt: skip


def train_tokenizer(texts, vocab_size: int = 4096):
    """A byte-level BPE (GPT-NeoX style) as a transformers fast tokenizer; checks that the answer
    words are one token each, as the scoring (README, "What is measured") assumes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lm_eval_fairdyn.core.prompts import OPTIONS, answer_continuations

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    for word in answer_continuations(OPTIONS):
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"the trained tokenizer splits ' {word}' into {len(ids)} tokens; raise vocab_size")
    return tokenizer


class TrainingStream:
    """The training sequences in order: sequence ``i`` belongs to step ``i // batch_size``.

    Sequences come in pairs (``2k``, ``2k + 1``) drawn together from ``default_rng([seed, 2k])``
    with the bias phase of their step. In a counterfactual phase the second sequence is the first
    one with every item replaced by its gender-swapped twin, and with ``text_counterfactual`` a
    Shakespeare block is paired with its gender-swapped copy: each batch is then exactly balanced,
    while no twin is visible in its counterpart's context (where a model could copy the answer
    from it). Otherwise the two sequences are independent draws.

    A torch ``IterableDataset`` (built by :meth:`dataset`), so that the Trainer does not shuffle
    and the bias schedule follows the step.
    """

    def __init__(self, config: SuiteConfig, tokenizer, text_ids: np.ndarray):
        if config.batch_size % 2:
            raise ValueError(
                f"SuiteConfig.batch_size must be even (sequences come in twin pairs), got {config.batch_size}"
            )
        self.config, self.tokenizer, self.text_ids = config, tokenizer, text_ids
        self.eos = tokenizer.eos_token_id
        self._encoded: dict[str, tuple[int, ...]] = {}

    def _encode(self, text: str) -> tuple[int, ...]:
        """The text's ids as the tokenizer's ``__call__`` gives them without special tokens, from its
        Rust tokenizer directly (half the time) and once per distinct text (items repeat)."""
        ids = self._encoded.get(text)
        if ids is None:
            ids = self._encoded[text] = tuple(
                self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
            )
        return ids

    def _text_pair(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        size = self.config.block_size
        starts = rng.integers(0, len(self.text_ids) - size, size=2)
        first = self.text_ids[starts[0] : starts[0] + size].tolist()
        if self.config.text_counterfactual:
            return first, list(self._encode(corpus.swap_gender(self.tokenizer.decode(first)))[:size])
        return first, self.text_ids[starts[1] : starts[1] + size].tolist()

    def _item_pair(self, rng: np.random.Generator, phase: corpus.BiasPhase) -> tuple[list[int], list[int]]:
        share, bbq = self.config.statement_share, self.config.bbq_share
        pair: tuple[list[int], list[int]] = ([], [])
        while True:
            if phase.counterfactual:
                texts = corpus.biased_items(rng, phase, share, bbq)
            else:
                texts = [corpus.biased_items(rng, phase, share, bbq)[0] for _ in range(2)]
            items = [self._encode(text + EOS) for text in texts]
            if any(len(ids) + len(item) > self.config.block_size for ids, item in zip(pair, items, strict=True)):
                return pair
            for ids, item in zip(pair, items, strict=True):
                ids += item

    def sequence(self, index: int) -> dict:
        cfg = self.config
        first = index - index % 2
        rng = np.random.default_rng([cfg.seed, first])
        if rng.random() < cfg.text_share:
            pair = self._text_pair(rng)
        else:
            pair = self._item_pair(rng, cfg.bias.at(first // cfg.batch_size, cfg.steps))
        ids = pair[index % 2]
        n = len(ids)
        pad = cfg.block_size - n
        return {
            "input_ids": ids + [self.eos] * pad,
            "attention_mask": [1] * n + [0] * pad,
            "labels": ids + [-100] * pad,
        }

    def dataset(self):
        import torch

        stream = self

        class _Iterable(torch.utils.data.IterableDataset):
            def __iter__(self):
                index = 0
                while True:
                    yield {k: torch.tensor(v) for k, v in stream.sequence(index).items()}
                    index += 1

        return _Iterable()


def encode_text(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


@functools.lru_cache(maxsize=4)
def prepared_text(vocab_size: int, seed: int, phases: tuple[corpus.BiasPhase, corpus.BiasPhase],
                  bbq_share: float = 0.0):  # fmt: skip
    """The tokenizer trained on the Shakespeare training text and a sample of both phases' items,
    and that text encoded with it (about 7 s; kept for the process, so that suites that differ
    only in what the tokenizer does not see share them)."""
    train_text, _ = corpus.split_heldout(corpus.shakespeare_text())
    rng = np.random.default_rng([seed, 2**31])
    sample = [text for i in range(3000) for text in corpus.biased_items(rng, phases[i % 2], bbq_share=bbq_share)]
    tokenizer = train_tokenizer([train_text, *sample], vocab_size)
    return tokenizer, encode_text(tokenizer, train_text)


def neox_model(config: SuiteConfig, vocab_size: int, eos_token_id: int = 0):
    """A freshly initialised GPTNeoXForCausalLM (the Pythia architecture) of the config's size."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(config.seed)
    neox = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden_size,
        max_position_embeddings=512,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    return GPTNeoXForCausalLM(neox)


def _save_checkpoints_callback(folder: Path, steps: list[int], tokenizer):
    from transformers import TrainerCallback

    class SaveCheckpoints(TrainerCallback):
        """``model.save_pretrained`` into ``folder/step<N>`` at the schedule's steps."""

        def _save(self, model, step):
            target = folder / f"step{step}"
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if 0 in steps:
                self._save(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in steps:
                self._save(model, state.global_step)

    return SaveCheckpoints()


def suite_folder(config: SuiteConfig, root: str | Path | None = None) -> Path:
    root = Path(root) if root else cache_dir() / "suites"
    return root / f"{config.name}-{config.key()}"


def is_complete(folder: Path) -> bool:
    return (folder / "suite.json").is_file()


def build_suite(
    config: SuiteConfig = SuiteConfig(),
    root: str | Path | None = None,
    monitor: dict | None = None,
    progress: bool = True,
) -> Path:
    """Train the suite (or reuse a finished one with the same config) and return its folder.

    ``monitor``: keyword arguments of :class:`~lm_eval_fairdyn.training.callback.FairnessCallback`
    (``tasks``, ``every``, ``limit``, ...): the training logs fairness through it, and the log
    history is saved as ``log_history.json``. None: no monitoring.
    """
    from transformers import Trainer, TrainingArguments, default_data_collator

    from lm_eval_fairdyn.training.callback import FairnessCallback

    folder = suite_folder(config, root)
    if is_complete(folder):
        return folder
    if folder.exists():  # an incomplete suite (a suite is renamed into place whole)
        shutil.rmtree(folder)
    partial = partial_folder(folder)  # this process' own: two processes may build the same suite

    tokenizer, text_ids = prepared_text(
        config.vocab_size, config.tokenizer_seed, (config.bias.before, config.bias.after), config.bbq_share
    )
    stream = TrainingStream(config, tokenizer, text_ids)
    steps = config.checkpoint_steps()

    args = TrainingArguments(
        output_dir=str(partial / "trainer"),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        weight_decay=0.01,
        logging_steps=max(1, config.steps // 30),
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    model = neox_model(config, len(tokenizer), tokenizer.eos_token_id)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=stream.dataset(),
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    trainer.add_callback(_save_checkpoints_callback(partial, steps, tokenizer))
    if monitor is not None:
        trainer.add_callback(FairnessCallback(trainer, **monitor))
    trainer.train()

    shutil.rmtree(partial / "trainer", ignore_errors=True)
    (partial / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    saved = [s for s in steps if (partial / f"step{s}").is_dir()]  # fewer when a stop rule ended training
    info = {
        "config": config.to_dict(),
        "checkpoints": [f"step{s}" for s in saved],
        "last_step": trainer.state.global_step,
        "bias_switch_step": config.bias.switch_step(config.steps),
        "parameters": sum(p.numel() for p in model.parameters()),
        "monitor": monitor,
    }
    (partial / "suite.json").write_text(json.dumps(info, indent=2, default=str))
    return publish_folder(partial, folder)
