"""Every key the contract accepts is documented in the shipped `champion.toml`."""

from __future__ import annotations

import re
import tomllib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from champion.training.config import Contract
from tests.unit.conftest import PROJECT_FILE

Path_ = tuple[str, ...]

_HEADER = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
_ASSIGNED = re.compile(r"\b([A-Za-z_]\w*)\s*=")  # `key = ...` in a comment
_DOTTED = re.compile(r"\b([a-z_]+(?:\.[a-z_<>*]+)+)\b")  # `data.max_null_rate` in a comment


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds directly (through unions and Annotated)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _models(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _keys(annotation: Any, path: Path_) -> set[Path_]:
    """The key paths below `path` an annotation accepts; `*` stands for a name of one's own."""
    if models := _models(annotation):
        return {key for model in models for key in model_keys(model, path)}
    origin = get_origin(annotation)
    if origin is Annotated:
        return _keys(get_args(annotation)[0], path)
    if origin in (Union, types.UnionType):
        return {key for arg in get_args(annotation) for key in _keys(arg, path)}
    if origin is dict:
        below = _keys(get_args(annotation)[1], (*path, "*"))
        # A table of names of one's own to plain values (metrics.guardrails): the table is a key.
        return {path} if below == {(*path, "*")} else below
    return {path}


def model_keys(model: type[BaseModel], prefix: Path_ = ()) -> set[Path_]:
    return {
        key
        for name, info in model.model_fields.items()
        for key in _keys(info.annotation, (*prefix, info.alias or name))
    }


def _toml_paths(table: dict[str, Any], prefix: Path_ = ()) -> set[Path_]:
    paths: set[Path_] = set()
    for key, value in table.items():
        paths.add((*prefix, key))
        if isinstance(value, dict):
            paths |= _toml_paths(value, (*prefix, key))
    return paths


def documented_paths(text: str) -> set[Path_]:
    """Keys set in the file, plus keys its comments name: `key = …` under a section, or dotted."""
    paths = _toml_paths(tomllib.loads(text))
    section: Path_ = ()
    for line in text.splitlines():
        if header := _HEADER.match(line):
            section = tuple(part.strip() for part in header.group(1).split("."))
        if "#" not in line:
            continue
        comment = line.split("#", 1)[1]
        paths |= {(*section, name) for name in _ASSIGNED.findall(comment)}
        paths |= {tuple(dotted.split(".")) for dotted in _DOTTED.findall(comment)}
    return paths


def _covers(key: Path_, documented: Path_) -> bool:
    return len(documented) >= len(key) and all(
        want in ("*", have) for want, have in zip(key, documented, strict=False)
    )


def undocumented(text: str) -> list[str]:
    found = documented_paths(text)
    return sorted(
        ".".join(key)
        for key in model_keys(Contract)
        if not any(_covers(key, path) for path in found)
    )


def test_every_contract_key_is_documented_in_the_shipped_file() -> None:
    """It finds every key the Contract model accepts set or named in champion.toml's comments."""
    missing = undocumented(PROJECT_FILE.read_text(encoding="utf-8"))
    assert missing == [], (
        f"keys the contract accepts but champion.toml does not document: {missing}"
    )


def test_the_check_sees_keys_of_nested_tables_and_commented_alternatives() -> None:
    """It walks nested models and tables of one's own names, and reads commented-out keys."""
    keys = model_keys(Contract)
    assert {("features", "*", "nullable"), ("search", "n_jobs"), ("metrics", "guardrails")} <= keys
    assert ("search", "space", "*", "*", "low") in keys
    assert ("gate", "bootstrap_samples") in keys
    text = PROJECT_FILE.read_text(encoding="utf-8")
    assert "features.*.nullable" not in undocumented(text)
    without = re.sub(r"(?m)^nullable = .*\n", "", text).replace("# nullable (default", "# (")
    assert "features.*.nullable" in undocumented(without)
    without = re.sub(r"(?m)^n_jobs = .*\n", "", text)
    assert "search.n_jobs" in undocumented(without)
    schedule = text.replace("interval_minutes", "every")
    assert "schedule.interval_minutes" in undocumented(schedule)
