"""One folder per benchmark: its data (sources, checksums, checks, quirks), its records as the
method's prompts, its lm-eval hooks and its description for the registry (``core.registry``),
registered when the folder is imported. The task YAMLs are in ``task_configs/<benchmark>/``."""
