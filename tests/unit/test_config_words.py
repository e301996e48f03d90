"""Every pattern a config model constrains a string with has its words (agent.config.schema.PATTERN_WORDS):
an error says what to write, never shows a regular expression."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel

from agent.config import AssetConfig
from agent.config.schema import PATTERN_WORDS, allowed, unwrap
from connectors.opcua.config import OpcUaSourceConfig


def _patterns(model: type[BaseModel], seen: set) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    found = set()
    for info in model.model_fields.values():
        for m in info.metadata:
            if getattr(m, "pattern", None):
                found.add(m.pattern)
        stack = [info.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                found |= _patterns(ann, seen)
            stack.extend(get_args(ann))
    return found


def test_every_model_pattern_has_words():
    patterns = _patterns(AssetConfig, set())
    assert len(patterns) >= 4  # names, hook names, URLs, OPC-UA endpoints
    assert sorted(p for p in patterns if p not in PATTERN_WORDS) == []


def test_allowed_is_words():
    info = OpcUaSourceConfig.model_fields["endpoint"]
    text = allowed(unwrap(info.annotation, tuple(info.metadata)))
    assert text.startswith("a string opc.tcp://HOST:PORT")
    assert "\\" not in text and "^" not in text
