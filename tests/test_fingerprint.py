"""Checkpoint fingerprints and lm-eval's request cache keyed by them (lm-eval issue #2715)."""

import json
import shutil

import pytest
import torch

from lm_eval_fairdyn.cli import main
from lm_eval_fairdyn.core.fingerprint import CacheNotKeyable, CheckpointCachingLM, answers_key, weights_fingerprint
from lm_eval_fairdyn.core.harness import flatten_results


def test_weights_fingerprint_changes_with_any_bit_of_any_weight():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    copy = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    copy.load_state_dict(model.state_dict())
    assert weights_fingerprint(model) == weights_fingerprint(copy)
    with torch.no_grad():
        copy[1].bias[0] = torch.nextafter(copy[1].bias[0], torch.tensor(1.0))  # one unit in the last place
    assert weights_fingerprint(model) != weights_fingerprint(copy)
    assert weights_fingerprint(model) != weights_fingerprint(model.to(torch.bfloat16))


def test_a_model_without_torch_weights_is_refused():
    class RemoteModel:
        rank = 0

    with pytest.raises(CacheNotKeyable, match="lm-eval issue #2715"):
        CheckpointCachingLM(RemoteModel(), "/tmp/never_rank0.db")


def evaluate(folder, out, winobias_dir, *extra):
    code = main([
        "eval", "--model", "hf-fairdyn", "--model_args", f"pretrained={folder}", "--tasks", "winobias_fairdyn_1seed",
        "--limit", "8", "--batch_size", "4", "--device", "cpu", "--output_path", str(out),
        "--metadata", json.dumps({"winobias_dir": str(winobias_dir)}), *extra,
    ])  # fmt: skip
    assert code == 0
    (path,) = out.rglob("results*.json")
    return flatten_results(json.loads(path.read_text()))


@pytest.mark.slow
def test_fairdyn_eval_never_shares_cached_answers_between_checkpoints(tiny_checkpoints, winobias_dir, tmp_path):
    prefix = tmp_path / "cache" / "answers"
    first = evaluate(tiny_checkpoints / "step0", tmp_path / "a", winobias_dir, "--use_cache", str(prefix))
    second = evaluate(tiny_checkpoints / "step10", tmp_path / "b", winobias_dir, "--use_cache", str(prefix))
    uncached = evaluate(tiny_checkpoints / "step10", tmp_path / "c", winobias_dir)
    assert second == uncached and second != first  # lm-eval's own cache would hand step10 step0's answers
    assert len(list(prefix.parent.glob("answers_rank0.*.db"))) == 2
    # the same checkpoint again is answered from its cache, without a forward pass
    again = evaluate(tiny_checkpoints / "step10", tmp_path / "d", winobias_dir, "--use_cache", str(prefix))
    assert again == uncached and len(list(prefix.parent.glob("*.db"))) == 2


def test_identical_weights_share_a_key_and_other_scoring_settings_do_not(tiny_checkpoints, tmp_path):
    from lm_eval_fairdyn.core.model import HFLMWithRank

    shutil.copytree(tiny_checkpoints / "step0", tmp_path / "copy")
    original = HFLMWithRank(pretrained=str(tiny_checkpoints / "step0"), device="cpu")
    assert answers_key(original) == answers_key(HFLMWithRank(pretrained=str(tmp_path / "copy"), device="cpu"))
    assert answers_key(original) != answers_key(HFLMWithRank(pretrained=str(tiny_checkpoints / "step10"), device="cpu"))
    assert answers_key(original) != answers_key(
        HFLMWithRank(pretrained=str(tmp_path / "copy"), device="cpu", add_bos_token=True)
    )
    for setting in ("share_context", "scored_logits_only"):  # hf-fairdyn's own: other passes, other rounding
        assert answers_key(original) != answers_key(
            HFLMWithRank(pretrained=str(tmp_path / "copy"), device="cpu", **{setting: True})
        )
