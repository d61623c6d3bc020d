"""``RunOptions``: what one sampling run does, made from the settings fields marked ``scope="run"``.

The fields (names, types, defaults, descriptions) come from :class:`~tpu_runtime.settings.TPUSettings`,
so a new per-run setting is one field there. Values are not re-checked against the settings' bounds:
per-model overrides (the optimisation node's dict) go in with ``model_copy(update=...)`` as before.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, create_model
from typing_extensions import Self

from .settings import TPUSettings, fields_where


class _RunOptionsBase(BaseModel):
    @classmethod
    def from_settings(cls, settings: TPUSettings) -> Self:
        """The run options in ``settings`` (a ``RunOptions``)."""
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})


def _field(name: str) -> tuple[Any, Any]:
    info = TPUSettings.model_fields[name]
    return info.annotation, Field(info.default, description=info.description)


RunOptions = create_model(
    "RunOptions", __base__=_RunOptionsBase, __module__=__name__,
    __doc__="What one sampling run does; the settings, overridden per model by the optimisation node.",
    **{name: _field(name) for name in fields_where(scope="run")})
