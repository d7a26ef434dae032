"""Reading YAML the way the config reference promises: a key written twice is an error, and only ``true`` /
``false`` are booleans.

PyYAML's ``safe_load`` follows YAML 1.1, which has two traps for a config file:

* a mapping that holds a key twice (a section or a setting written twice) keeps the last value without a
  word, so half of what the user wrote is silently ignored;
* ``yes``, ``no``, ``on`` and ``off`` are booleans, so ``--set classifier.trust_pickle=yes`` would allow
  unpickling although the docs promise that only a real ``true`` does.

:func:`load_yaml` refuses the first (naming the key and both lines) and reads the second as text, as YAML 1.2
does, so the schema refuses it with the fix (``--set classifier.trust_pickle=true``).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["YAML11_BOOLEANS", "load_yaml"]

#: The YAML 1.1 spellings of booleans that are text here (lower case; any capitalisation).
YAML11_BOOLEANS: tuple[str, ...] = ("yes", "no", "on", "off", "y", "n")

_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false only) and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *anchor` merges; its keys may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKey(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep)


# Booleans as in YAML 1.2: only true/false (in the three capitalisations YAML allows).
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def where(first: int, second: int) -> str:
    """``lines 3 and 12``, or ``line 1`` when both are on one line."""
    return f"line {first}" if first == second else f"lines {first} and {second}"


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (from ``source``, named in messages: a file path or ``--set KEY=VALUE``).

    Raises :class:`~hetpure.errors.ConfigError` for invalid YAML and for a mapping that holds a key twice.

    Example:
        >>> from hetpure.yamlio import load_yaml
        >>> load_yaml("run: {progress: off, sanity: true}", "cfg.yaml")
        {'run': {'progress': 'off', 'sanity': True}}
        >>> load_yaml("defense: {tau: 0.5}\\ndefense: {tau: 0.9}", "cfg.yaml")
        Traceback (most recent call last):
            ...
        hetpure.errors.ConfigError: cfg.yaml: key 'defense' is written twice (lines 1 and 2); ...
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{source}: key {exc.key!r} is written twice ({where(exc.first, exc.second)}); YAML would keep "
            "only the last one and silently drop the other. Fix: write it once (merge the two into one)"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
