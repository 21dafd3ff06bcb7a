"""Training integration: fairness monitoring inside a transformers ``Trainer`` loop."""

from lm_eval_fairdyn.training.callback import FairnessCallback, StopRule

__all__ = ["FairnessCallback", "StopRule"]
