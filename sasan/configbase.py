"""Base class for configuration sections: unknown keys and wrong types fail loudly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    # strict: no silent "3" -> 3 coercion; ints are still accepted where floats are expected.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
