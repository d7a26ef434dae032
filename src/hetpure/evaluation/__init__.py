"""The evaluation harness: config schema, run identity, records, statistics, the runner and its report.

Layers, each a module: :mod:`~hetpure.evaluation.config` (the typed config), :mod:`~.identity` (what a run
computes), :mod:`~.records` (atomic JSONL records, one writer per folder), :mod:`~.components` (building
what a config names), :mod:`~.runner` (``evaluate``: attack, vote, record, resume), :mod:`~.stats` and
:mod:`~.report` (intervals, paired tests, the summary), :mod:`~.migrate` (old run folders).
``hetpure.evaluate`` re-exports the public names.
"""

from .components import attacked_purifier, build_components, build_dataset, build_models, identity_of, settings_hash
from .config import DEFAULTS, parse_set, purify_config, resolve_config
from .counting import paired_comparison
from .records import append_records, read_records
from .report import describe_pipeline, summary_markdown
from .runner import evaluate
from .stats import mcnemar_p, wilson_interval

__all__ = [
    "DEFAULTS", "append_records", "attacked_purifier", "build_components", "build_dataset", "build_models",
    "describe_pipeline", "evaluate", "identity_of", "mcnemar_p", "paired_comparison", "parse_set", "purify_config",
    "read_records", "resolve_config", "settings_hash", "summary_markdown", "wilson_interval",
]
