"""One process of the two-process FairnessCallback test (torch.distributed with gloo on CPU).

    python distributed_worker.py RANK WORLD_SIZE PORT MODEL_DIR WINOBIAS_DIR OUT_JSON

Each process calls the callback at the same training step, as the Trainer does on every process;
OUT_JSON receives how many evaluations and log calls this process made and its stop decision.
"""

import json
import os
import sys


def main(rank: int, world_size: int, port: str, model_dir: str, winobias_dir: str, out: str) -> None:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState

    from lm_eval_fairdyn.training.callback import FairnessCallback, StopRule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)

    class Trainer:  # what the callback uses of a Trainer: its log method
        logged = []

        def log(self, values):
            self.logged.append(values)

    trainer = Trainer()
    task = "winobias_fairdyn_1seed"
    rule = StopRule(gap=f"{task}/jsdp_gap", max_abs_gap=0.0, test="threshold")
    callback = FairnessCallback(
        trainer, tasks=[task], every=1, limit=8, stop_rule=rule, metadata={"winobias_dir": winobias_dir}
    )
    evaluations = []
    evaluate = callback.evaluate
    callback.evaluate = lambda model, tokenizer: evaluations.append(1) or evaluate(model, tokenizer)
    state = TrainerState(global_step=1, is_world_process_zero=rank == 0)
    control = TrainerControl()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    callback.on_step_end(None, state, control, model=model, processing_class=tokenizer)
    with open(out, "w") as handle:
        json.dump(
            {"evaluations": len(evaluations), "logged": len(trainer.logged), "stop": control.should_training_stop},
            handle,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, world_size, port, model_dir, winobias_dir, out = sys.argv[1:]
    main(int(rank), int(world_size), port, model_dir, winobias_dir, out)
