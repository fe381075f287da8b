"""The HyperAttention flags, one per field of ``HyperAttentionConfig``, and the config they give."""

from __future__ import annotations

import argparse
from dataclasses import fields

from hyperattn.config import IMPLEMENTATIONS, QUERY_BLOCK_RULES, SAMPLING_METHODS, HyperAttentionConfig
from hyperattn.eval.models import PAPER_CONFIG

CHOICES = {"sampling": SAMPLING_METHODS, "impl": IMPLEMENTATIONS, "query_blocks": QUERY_BLOCK_RULES}


def flag(name: str) -> str:
    """``--block-size`` for the field ``block_size``."""
    return "--" + name.replace("_", "-")


def _flags(config: HyperAttentionConfig, base: HyperAttentionConfig) -> str:
    """The flags that turn ``base`` into ``config``."""
    return " ".join(f"{flag(field.name)} {getattr(config, field.name)}" for field in fields(config)
                    if getattr(config, field.name) != getattr(base, field.name))


def add_config_args(parser: argparse.ArgumentParser, defaults: HyperAttentionConfig = HyperAttentionConfig()) -> None:
    """A flag per config field, defaulting to its value in ``defaults``."""
    changes = _flags(defaults, HyperAttentionConfig())
    with_changes = f", with {changes}" if changes else ""
    group = parser.add_argument_group(f"HyperAttention (defaults: the library's{with_changes}; "
                                      f"the paper's algorithm: {_flags(PAPER_CONFIG, defaults)})")
    for field in fields(HyperAttentionConfig):
        default, text = getattr(defaults, field.name), field.metadata["help"]
        text += " (default: %(default)s)"
        group.add_argument(flag(field.name), type=type(field.default), choices=CHOICES.get(field.name),
                           default=default, help=text)


def config_from_args(args: argparse.Namespace) -> HyperAttentionConfig:
    """The config of the flags of ``add_config_args``."""
    values = {field.name: getattr(args, field.name) for field in fields(HyperAttentionConfig)}
    return HyperAttentionConfig(**values)


def labelled_overrides(text: str) -> tuple[str, dict]:
    """Parse ``LABEL:field=value,field=value`` (field names as in ``HyperAttentionConfig``, values
    of the field's type) into (label, {field: value}); argparse ``type``."""
    label, sep, body = text.partition(":")
    if not sep or not label or not body:
        raise argparse.ArgumentTypeError(f"expected LABEL:field=value,..., got {text!r}")
    types = {field.name: type(field.default) for field in fields(HyperAttentionConfig)}
    overrides = {}
    for item in body.split(","):
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in types:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r}: expected field=value with a field of "
                                              f"HyperAttentionConfig ({', '.join(types)})")
        try:
            overrides[name] = types[name](value.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {name} takes a {types[name].__name__}") from None
    return label, overrides


def compared_configs(args: argparse.Namespace, flag: str = "--compare") -> dict[str, HyperAttentionConfig]:
    """{label: config} of the ``flag`` flags (``labelled_overrides``, in order): each the flags'
    config with its overrides."""
    base = {field.name: getattr(args, field.name) for field in fields(HyperAttentionConfig)}
    configs = {}
    for label, overrides in getattr(args, flag.lstrip("-").replace("-", "_")) or []:
        if label in configs:
            raise ValueError(f"{flag}: the label {label!r} is given twice")
        values = {**base, **overrides}
        configs[label] = HyperAttentionConfig(**values)
    return configs
