"""``hetpure evaluate`` and ``from hetpure.evaluate import evaluate``: the public names of the evaluation harness
(:mod:`hetpure.evaluation`), kept at this path for the CLI, the benchmarks and hetpure 0.1 code."""

from .evaluation.components import (
    attacked_purifier,
    build_components,
    build_dataset,
    build_models,
    check_input_size,
    identity_of,
    model_class_names,
    settings_hash,
)
from .evaluation.config import DEFAULTS, parse_set, purify_config, resolve_config
from .evaluation.counting import paired_comparison
from .evaluation.records import append_records, read_records
from .evaluation.report import cpu_model, describe_pipeline, summary_markdown
from .evaluation.runner import evaluate
from .evaluation.stats import mcnemar_p, wilson_interval

__all__ = [
    "DEFAULTS", "append_records", "attacked_purifier", "build_components", "build_dataset", "build_models",
    "check_input_size", "cpu_model", "describe_pipeline", "evaluate", "identity_of", "mcnemar_p",
    "model_class_names", "paired_comparison", "parse_set", "purify_config", "read_records", "resolve_config",
    "settings_hash", "summary_markdown", "wilson_interval",
]
_summary_markdown = summary_markdown  # the name hetpure 0.1 code used
