"""FairnessCallback in real training: random states, resume_from_checkpoint, distributed runs."""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_concurrently

from lm_eval_fairdyn.offline import corpus
from lm_eval_fairdyn.offline.demo import FAIRNESS_TASK
from lm_eval_fairdyn.offline.suite import SuiteConfig, TrainingStream, neox_model, prepared_text
from lm_eval_fairdyn.training.callback import FairnessCallback, StopRule, preserved_random_states

TINY = SuiteConfig(steps=8, batch_size=4, block_size=128, hidden_size=32, layers=1)
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return corpus.write_synthetic_winobias(tmp_path_factory.mktemp("synthetic"))


def test_every_random_state_is_restored_cuda_included(monkeypatch):
    """lm-eval reseeds Python, NumPy, torch and every CUDA device (torch.manual_seed). This
    machine has no GPU, so one CUDA device is simulated at the torch.cuda functions that
    torch.manual_seed and torch.random.fork_rng call."""
    device_states = {0: torch.tensor([7, 7, 7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=0: device_states[int(device)].clone())
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device=0: device_states.__setitem__(int(device), state.clone())
    )
    monkeypatch.setattr(
        torch.cuda,
        "manual_seed_all",
        lambda seed: device_states.__setitem__(0, torch.tensor([seed % 256] * 3, dtype=torch.uint8)),
    )
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    device_states[0] = torch.tensor([7, 7, 7], dtype=torch.uint8)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    device_states[0] = torch.tensor([7, 7, 7], dtype=torch.uint8)
    with preserved_random_states():
        random.seed(0), np.random.seed(1234), torch.manual_seed(1234)  # what simple_evaluate does
        assert device_states[0].tolist() == [1234 % 256] * 3
    assert device_states[0].tolist() == [7, 7, 7]
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def trainer_with_callback(output_dir: Path, synthetic_dir: Path):
    from transformers import Trainer, TrainingArguments, default_data_collator

    tokenizer, text_ids = prepared_text(TINY.vocab_size, TINY.seed, (TINY.bias.before, TINY.bias.after))
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=TINY.steps, per_device_train_batch_size=TINY.batch_size,
        save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0,
    )  # fmt: skip
    model = neox_model(TINY, len(tokenizer), tokenizer.eos_token_id)
    trainer = Trainer(model=model, args=args, train_dataset=TrainingStream(TINY, tokenizer, text_ids).dataset(),
                      data_collator=default_data_collator, processing_class=tokenizer)  # fmt: skip
    # Strikes build up at every evaluation; the third in a row stops training.
    rule = StopRule(gap=f"{FAIRNESS_TASK}/jsdp_gap", max_abs_gap=0.0, test="threshold", patience=3)
    callback = FairnessCallback(trainer, tasks=[FAIRNESS_TASK], every=2, limit=24, stop_rule=rule,
                                metadata={"winobias_dir": str(synthetic_dir)})  # fmt: skip
    trainer.add_callback(callback)
    return trainer, callback


@pytest.mark.slow
def test_state_survives_resume_from_checkpoint(tmp_path, synthetic_dir):
    trainer, callback = trainer_with_callback(tmp_path, synthetic_dir)
    trainer.train()
    assert trainer.state.global_step == 6 and [e["step"] for e in callback.history] == [2, 4, 6]
    saved = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["lm_eval_fairdyn.FairnessCallback"]["strikes"] == 2

    resumed, resumed_callback = trainer_with_callback(tmp_path, synthetic_dir)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    # Without the restored strikes (2 at step 4), the resumed run would count 1 at step 6 and 2 at
    # step 8, and train to the end.
    assert resumed.state.global_step == 6
    assert resumed_callback.history[:2] == callback.history[:2]
    assert [e["step"] for e in resumed_callback.history] == [2, 4, 6] and resumed_callback._strikes == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_only_the_main_process_evaluates_and_all_stop_together(neox_dir, synthetic_dir, tmp_path):
    port = str(free_port())
    worker = [sys.executable, str(HERE / "distributed_worker.py")]
    run_concurrently([
        [*worker, str(rank), "2", port, str(neox_dir), str(synthetic_dir), str(tmp_path / f"rank{rank}.json")]
        for rank in range(2)
    ])  # fmt: skip
    main, other = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2))
    assert main == {"evaluations": 1, "logged": 1, "stop": True}
    assert other == {"evaluations": 0, "logged": 0, "stop": True}  # the main process's decision


@pytest.mark.parametrize(("planted", "stops"), [(0.1, True), (0.0, False)])
def test_the_default_stop_rule_stops_on_a_planted_bias_and_not_without_one(planted, stops):
    """The default rule reads the checkpoint's verdict from its per-prompt values, as fairdyn
    analyze does: three evaluations of prompts with a planted JSD-P gap of 0.1 (margin 0.05) are
    three favours_male verdicts and stop training at the third (patience 3); three without a
    bias are fair and never stop it. The paper's test is not consulted."""
    from conftest import planted_prompts

    rule = StopRule(patience=3)
    assert rule.test == "verdict" and rule.task == "winobias_fairdyn_1seed" and rule.measure == "jsdp"
    callback = FairnessCallback.__new__(FairnessCallback)  # the stop-rule bookkeeping alone, no trainer
    callback.stop_rule, callback._strikes, callback._best_performance = rule, 0, None
    decisions, verdicts = [], []
    for step in (1, 2, 3):
        verdict = rule.pair_verdict(planted_prompts(planted, rng_seed=step))
        verdicts.append(verdict["verdict"])
        values = {rule.gap: planted, rule.pvalue_name(): 1e-30}  # the paper's p would stop either run
        decisions.append(callback._apply_stop_rule(step, values, verdict))
    assert verdicts == ["favours_male"] * 3 if stops else verdicts == ["fair"] * 3
    assert decisions == ([False, False, True] if stops else [False] * 3)
    paper = StopRule(test="paper_mw", max_abs_gap=0.0)
    assert paper.violated({paper.gap: 0.001, paper.pvalue_name(): 1e-30})  # what the option says it is


def test_stop_rule_refuses_an_unknown_test_or_gap_and_a_task_the_callback_does_not_evaluate():
    with pytest.raises(ValueError, match="of task 'winobias_fairdyn_1seed', which the callback does not evaluate"):
        FairnessCallback(None, tasks=["heldout_fairdyn"], stop_rule=StopRule())
    with pytest.raises(ValueError, match="choose from"):
        StopRule(test="mann_whitney")
    with pytest.raises(ValueError, match="jsdp_gap or <task>/ar_gap"):
        StopRule(gap="winobias_fairdyn_1seed/acc_male")
