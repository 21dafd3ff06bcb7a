"""lm-eval-fairdyn: how a language model's gender bias evolves during training.

WinoBias Type 2 as lm-evaluation-harness tasks (``winobias_fairdyn`` ...), the ``hf-fairdyn``
model that adds the vocabulary rank of each answer, and the metrics of the README's method section ("What is measured").
"""

from importlib.resources import files
from pathlib import Path

__version__ = "0.1.0"


def tasks_path() -> Path:
    """Folder of the lm-eval task YAML files, for ``lm_eval --include_path``."""
    return Path(str(files("lm_eval_fairdyn.task_configs")))
