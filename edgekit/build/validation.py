"""One-line messages for pydantic validation errors of a nested settings model (recipes): the
field's dotted path, the valid keys of the section an unknown key was found in, and input values
cut short (a YAML alias bomb must not be printed in full)."""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class whose field ``loc[-1]`` is (for 'unknown key' messages)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (args[0] if args else None)
    return model


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in ("tagged-union", "str"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


# A value shown in an error is cut short: a YAML alias bomb expands to billions of elements
# when printed in full, though PyYAML builds it from shared references in no time.
def _short(value: Any) -> str:
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 60, 60
    return short.repr(value)


def describe_error(err: ValidationError, root: type[BaseModel], named: dict[type[BaseModel], str] | None = None) -> tuple[str, str | None]:
    """(``field: message``, hint) for the first error of validating ``root``; ``named`` words the
    keys of some sections (``{Steps: "step"}``: "unknown step 'x'; valid steps: ...")."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    where = _where(loc)
    msg = e["msg"].removeprefix("Value error, ")
    hint = None
    if e["type"] == "extra_forbidden":
        model = _model_at(root, loc)
        valid = ", ".join(model.model_fields) if model else None
        msg = f"unknown key {loc[-1]!r}" + (f"; valid keys: {valid}" if valid else "")
        if model is not None and model in (named or {}):
            word = (named or {})[model]
            msg = f"unknown {word} {loc[-1]!r}; valid {word}s: {valid}"
    elif e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] == "literal_error":
        msg = f"{e['msg']} (got {_short(e.get('input'))})"
    return f"{where}: {msg}", hint
