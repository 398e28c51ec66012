"""Loading a recipe file: YAML read safely, validated, and every failure turned into one line naming the field.

Loading never raises anything but `SynthgenError`, whose message is `file: field.path: reason`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from synthgen.errors import SynthgenError
from synthgen.recipe.schema import NAME_PATTERN, LoadedRecipe, Recipe, describe_value
from synthgen.recipe.schema_base import FieldError
from synthgen.sources.spec import SourceSpec

_UNION_BRANCHES = ("str", "constrained-str", "PromptTemplate")
_TYPE_MISMATCH = frozenset(
    {"string_type", "model_type", "model_attributes_type", "dict_type", "list_type", "int_type", "float_type"}
)
MAX_RECIPE_BYTES = 10 * 2**20


def _is_branch(item: Any) -> bool:
    return isinstance(item, str) and (item in _UNION_BRANCHES or item.startswith("function-"))


def _format_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for position, item in enumerate(loc):
        is_key = position + 1 < len(loc) and loc[position + 1] == "[key]"
        if _is_branch(item) or item == "[key]":
            continue  # union branch names and pydantic's key marker are noise for users
        if isinstance(item, int) and not isinstance(item, bool) and not is_key:
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts) or "(top level)"


def _user_problems(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the union branches a value plainly was not meant for (a dict is not a `str` prompt, ...).

    For a value that fits no branch, keep only the first branch's complaint, so each value counts once.
    """
    branch_groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    kept: list[dict[str, Any]] = []
    for problem in problems:
        loc = tuple(problem["loc"])
        cut = next((i for i, item in enumerate(loc) if _is_branch(item)), None)
        if cut is None:
            kept.append(problem)
        else:
            group = branch_groups.setdefault(loc[:cut], [])
            if not group:
                kept.append(problem)  # placeholder: the group's chosen problem goes here
            group.append(problem)
    for group in branch_groups.values():
        real = [p for p in group if p["type"] not in _TYPE_MISMATCH] or group[:1]
        at = next(i for i, p in enumerate(kept) if p is group[0])
        kept[at : at + 1] = real
    return kept


def format_validation_error(error: ValidationError, source: str) -> str:
    """First problem of a pydantic error as `file: field.path: reason` (plus a count of the others)."""
    problems = _user_problems(error.errors())
    first = problems[0]
    loc = tuple(first["loc"])
    reason = first["msg"].removeprefix("Value error, ")
    value = describe_value(first.get("input"))
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc += cause.path
        reason = str(cause)
    elif first["type"] == "extra_forbidden":
        reason = "unknown key (not allowed here)"
    elif first["type"] == "missing":
        reason = "required field is missing"
    elif "[key]" in loc:  # a mapping key YAML read as a number, true/false (yes/no, on/off) or null (~)
        at = loc.index("[key]") - 1
        loc = (*loc[:at], describe_value(first.get("input")).strip("'"), *loc[at + 1 :])
        reason = f"the name {value} is not text to YAML; put it in quotes"
    elif first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        reason = f"must be a mapping of keys (key: value), got {value}"
    elif first["type"] == "string_pattern_mismatch" and (first.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        reason = f"must start with a letter or digit and hold only letters, digits, '_', '.' or '-' (got {value})"
    elif first["type"] != "value_error" and not isinstance(first.get("input"), (dict, list, tuple)):
        reason += f" (got {value})"
        if first["type"] == "string_type" and isinstance(first.get("input"), (int, float)):
            reason += "; put it in quotes"  # YAML reads 40, 1.5 and yes/no as numbers and booleans
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return f"{source}: {_format_location(loc)}: {reason}{more}"


class _RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` keys may be overridden by the explicit keys beside them
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} in one mapping", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        if data is None:
            kind = "empty"
        else:
            kind = "a list" if isinstance(data, list) else f"the single value {describe_value(data)}"
        raise SynthgenError(f"{source}: a recipe must be a YAML mapping of keys, but this file is {kind}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise SynthgenError(format_validation_error(error, source)) from None


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe file; every failure is a one-line `SynthgenError`."""
    path = Path(path)
    if not path.exists():
        raise SynthgenError(f"{path}: recipe file not found")
    if path.is_dir():
        raise SynthgenError(f"{path}: recipe must be a file, not a folder")
    if not path.is_file():
        raise SynthgenError(f"{path}: recipe must be a regular file")
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise SynthgenError(f"{path}: recipe is {size / 2**20:.0f} MiB; a recipe is a small YAML text file")
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SynthgenError(f"{path}: recipe is not UTF-8 text") from None
    except OSError as error:
        raise SynthgenError(f"{path}: cannot read recipe ({error.strerror})") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error) or "invalid YAML"
        raise SynthgenError(f"{path}: not valid YAML{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as error:  # e.g. a date like 2024-13-45
        raise SynthgenError(f"{path}: not valid YAML: {type(error).__name__}: {error}") from None
    recipe = parse_recipe(data, str(path))
    return LoadedRecipe(recipe=recipe, path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest())


def json_schema() -> dict[str, Any]:
    """JSON Schema of recipes, for editors (yaml-language-server) and docs."""
    schema = Recipe.model_json_schema()
    if _accepts_source_shorthand():  # `data: demo` / `data: path/to/images` (SourceSpec's before-validator)
        spec = schema["$defs"]["SourceSpec"]
        shorthand = {"type": "string", "description": "A path (type detected) or `demo` for the built-in phantoms."}
        schema["$defs"]["SourceSpec"] = {
            "title": spec.pop("title", "SourceSpec"),
            "description": spec.get("description", ""),
            "anyOf": [spec, shorthand],
        }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "synthgen recipe"
    return schema


def _accepts_source_shorthand() -> bool:
    try:
        SourceSpec.model_validate("demo")
    except ValidationError:
        return False
    return True


def canonical_json(recipe: Recipe) -> str:
    return json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
