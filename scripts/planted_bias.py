"""How reliably the checkpoint suite's planted bias is recovered, over seeds.

For each seed it builds the default suite (bias from half-way) and one with no bias planted, and
prints, per checkpoint, the male-female JSD-P gap of ``winobias_fairdyn_1seed``, its Mann-Whitney
p-value and rank-biserial effect, on the held-out synthetic prompts (and on WinoBias when
``--winobias_dir`` names a folder), with the option accuracies that show whether the model reads
the pronoun. ``--set`` overrides other :class:`SuiteConfig` fields::

    python scripts/planted_bias.py --seeds 0 1 --steps 400
    python scripts/planted_bias.py --seeds 0 --steps 1200 --bias none --every_checkpoint
    python scripts/planted_bias.py --seeds 0 --bias none --set text_share=0.1 statement_share=1.0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace

from lm_eval_fairdyn.core.harness import EvalSettings, evaluate, flatten_results
from lm_eval_fairdyn.offline import corpus
from lm_eval_fairdyn.offline.demo import FAIRNESS_TASK
from lm_eval_fairdyn.offline.suite import SuiteConfig, build_suite


def fairness(folder, winobias_dir) -> dict:
    settings = EvalSettings(tasks=(FAIRNESS_TASK,), batch_size=64, device="cpu", prompt_tables=False,
                            metadata={"winobias_dir": str(winobias_dir)})  # fmt: skip
    flat = flatten_results(evaluate(settings, f"pretrained={folder}"))
    return {k.split("/", 1)[1]: v for k, v in flat.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--winobias_dir", default=None)
    parser.add_argument("--suite_root", default=None, help="default: the cache")
    parser.add_argument("--bias", choices=["planted", "none", "both"], default="both")
    parser.add_argument("--every_checkpoint", action="store_true",
                        help="evaluate every checkpoint from half-way to the switch (default: the final one only) "
                             "also without a planted bias")  # fmt: skip
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="SuiteConfig overrides")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in SuiteConfig.__dataclass_fields__ or name in ("bias", "steps", "seed"):
            parser.error(f"--set {item}: not a SuiteConfig field that can be set here")
        kind = type(getattr(SuiteConfig(), name))
        overrides[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    data = {"synthetic": corpus.write_synthetic_winobias(tempfile.mkdtemp())}
    if args.winobias_dir:
        data["winobias"] = args.winobias_dir
    for seed in args.seeds:
        base = SuiteConfig(steps=args.steps, seed=seed, **overrides)
        switch = base.bias.switch_step(args.steps)
        evaluated = [s for s in base.checkpoint_steps() if s >= switch // 2]
        configs = {"planted": base, "none": replace(base, bias=corpus.BiasSchedule.unbiased())}
        for kind, config in configs.items():
            if args.bias not in (kind, "both"):
                continue
            folder = build_suite(config, args.suite_root, progress=False)
            for step in evaluated if kind == "planted" or args.every_checkpoint else [args.steps]:
                for name, folder_data in data.items():
                    v = fairness(folder / f"step{step}", folder_data)
                    row = {"seed": seed, "bias": kind, "step": step, "switch": switch, "data": name,
                           "gap": round(v["jsdp_gap"], 4), "p": float(f"{v['jsdp_gap_pvalue']:.2g}"),
                           "effect": round(v["jsdp_gap_effect"], 2),
                           **{f"option_acc_{g}": round(v[f"option_acc_{g}"], 2) for g in ("male", "female", "unspecified")}}  # fmt: skip
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
