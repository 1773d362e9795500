"""pydantic when it is installed, else a minimal stand-in with the same surface.

The lent GPU machine has torch and transformers but maybe not pydantic; the quantization
configs only need frozen models with defaults, ``extra="forbid"``, ``model_post_init``,
``model_dump`` and ``model_copy``, so training runs there too. Validation of values is
done by the configs themselves (``model_post_init``), identically in both cases.
"""

from __future__ import annotations

try:  # pragma: no cover - exercised where pydantic is missing
    from pydantic import BaseModel, ConfigDict, ValidationError

    HAVE_PYDANTIC = True
except ImportError:  # pragma: no cover
    HAVE_PYDANTIC = False

    class ValidationError(ValueError):  # type: ignore[no-redef]
        pass

    def ConfigDict(**kwargs):  # type: ignore[no-redef]  # noqa: N802
        return dict(kwargs)

    class BaseModel:  # type: ignore[no-redef]
        """Frozen, extra-forbidding record with class-level defaults."""

        model_config: dict = {}

        @classmethod
        def _fields(cls) -> dict:
            names: dict = {}
            for klass in reversed(cls.__mro__):
                for name in getattr(klass, "__annotations__", {}):
                    if not name.startswith("_") and name != "model_config":
                        names[name] = getattr(cls, name, ...)
            return names

        def __init__(self, **data):
            fields = self._fields()
            extra = sorted(set(data) - set(fields))
            if extra:
                raise ValidationError(f"{extra[0]}: extra inputs are not permitted")
            for name, default in fields.items():
                if name not in data and default is ...:
                    raise ValidationError(f"{name}: field required")
                object.__setattr__(self, name, data.get(name, default))
            self.model_post_init(None)

        def model_post_init(self, context) -> None:
            pass

        def __setattr__(self, name, value):
            raise ValidationError(f"{name}: instance is frozen")

        def model_dump(self) -> dict:
            return {name: getattr(self, name) for name in self._fields()}

        def model_copy(self, update: dict | None = None):
            return type(self)(**{**self.model_dump(), **(update or {})})

        def __eq__(self, other):
            return type(self) is type(other) and self.model_dump() == other.model_dump()

        def __hash__(self):
            return hash(tuple(sorted(self.model_dump().items())))

        def __repr__(self):
            return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.model_dump().items())})"


__all__ = ["BaseModel", "ConfigDict", "ValidationError", "HAVE_PYDANTIC"]
