"""Payloads at the edge: pydantic <-> JSON. The only module that knows pydantic.

A payload is validated at enqueue, dumped to standard JSON and validated again from that
JSON. The handler receives the copy made from JSON, so what runs in memory is exactly what a
durable job would read back from the store. A value that does not come back unchanged is
refused before anything is queued or stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from .exceptions import InvalidDeclaration, PayloadError

__all__ = ("PayloadCodec",)


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _first_difference(before: Any, after: Any, path: tuple[int | str, ...]) -> tuple[str, str]:
    """Find where a value changed in a JSON round trip and say why."""
    if isinstance(before, float) and not math.isfinite(before):
        return _loc(path), f"{before!r} is not allowed: JSON has no NaN or Infinity"
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for key in before:
            if key not in after:
                return _loc((*path, key)), "field is lost in a JSON round trip"
            if before[key] != after[key] or _has_non_finite(before[key]):
                return _first_difference(before[key], after[key], (*path, key))
    elif (
        isinstance(before, (list, tuple))
        and isinstance(after, (list, tuple))
        and type(before) is type(after)
        and len(before) == len(after)
    ):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            if b != a or _has_non_finite(b):
                return _first_difference(b, a, (*path, i))
    if isinstance(before, (bytes, bytearray)):
        return _loc(path), "raw bytes do not survive a JSON round trip"
    return _loc(path), (
        f"value {before!r} ({type(before).__name__}) comes back from JSON as "
        f"{after!r} ({type(after).__name__})"
    )


def _has_non_finite(value: Any) -> bool:
    return _find_unencodable(value, ()) is not None


def _find_unencodable(value: Any, path: tuple[int | str, ...]) -> tuple[str, str] | None:
    """Find a value JSON cannot carry: a non-finite float or bytes that are not UTF-8."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return _loc(path), f"{value!r} is not allowed: JSON has no NaN or Infinity"
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value.decode()
        except UnicodeDecodeError:
            return _loc(path), "raw bytes that are not UTF-8 cannot be stored as JSON"
        return None
    items: Any = ()
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, (set, frozenset)):
        items = ((i, v) for i, v in enumerate(sorted(value, key=repr)))
    for key, item in items:
        found = _find_unencodable(item, (*path, key))
        if found is not None:
            return found
    return None


class PayloadCodec:
    """Validates, encodes and decodes the payloads of one sidecar."""

    __slots__ = ("_adapter", "_plain_models", "handle", "payload_type")

    def __init__(self, handle: str, payload_type: Any) -> None:
        self.handle = handle
        self.payload_type = payload_type
        try:
            self._adapter: TypeAdapter[Any] = TypeAdapter(payload_type)
        except Exception as exc:
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'payload': pydantic cannot handle the payload type "
                f"{payload_type!r}: {exc}"
            ) from exc

        # Model classes whose equality is pydantic's own (fields, extra, private), so
        # comparing those three directly means the same.
        self._plain_models: frozenset[type] = frozenset(
            [payload_type]
            if isinstance(payload_type, type)
            and issubclass(payload_type, BaseModel)
            and payload_type.__eq__ is BaseModel.__eq__
            and not payload_type.__pydantic_generic_metadata__["origin"]
            else []
        )

    def _errors(self, exc: ValidationError) -> PayloadError:
        return PayloadError(self.handle, [(_loc(err["loc"]), err["msg"]) for err in exc.errors()])

    def encode(self, value: Any) -> tuple[str, Any]:
        """Validate ``value`` and return its JSON text and the copy rebuilt from that JSON.

        Raises:
            PayloadError: naming the handle and the field path of each problem.
        """
        adapter = self._adapter
        try:
            validated = adapter.validate_python(value)
        except ValidationError as exc:
            raise self._errors(exc) from None
        # The common case costs three pydantic calls and one comparison: the copy read back
        # from the JSON equals what was validated. NaN never equals itself, so a
        # non-finite float always takes the careful path below, as does anything else
        # that fails or changes on the way.
        try:
            text = adapter.dump_json(validated).decode()
            copy = adapter.validate_json(text)
            kind = type(copy)
            if kind is type(validated) and (
                # A model's own __eq__ does more work than it needs to here.
                copy.__dict__ == validated.__dict__
                and copy.__pydantic_extra__ == validated.__pydantic_extra__
                and copy.__pydantic_private__ == validated.__pydantic_private__
                if kind in self._plain_models
                else copy == validated
            ):
                return text, copy
        except (PydanticSerializationError, ValidationError, UnicodeDecodeError):
            pass
        return self._encode_carefully(validated)

    def _encode_carefully(self, validated: Any) -> tuple[str, Any]:
        """Every check, one at a time, so the error names the field and the reason."""
        adapter = self._adapter
        before = adapter.dump_python(validated)
        bad = _find_unencodable(before, ())
        if bad is not None:
            raise PayloadError(self.handle, [bad])
        try:
            text = adapter.dump_json(validated).decode()
        except PydanticSerializationError as exc:
            raise PayloadError(self.handle, [("", f"cannot be dumped to JSON: {exc}")]) from None
        try:
            copy = adapter.validate_json(text)
        except ValidationError as exc:
            raise PayloadError(
                self.handle,
                [
                    (_loc(err["loc"]), f"does not survive a JSON round trip: {err['msg']}")
                    for err in exc.errors()
                ],
            ) from None
        after = adapter.dump_python(copy)
        if before != after:
            raise PayloadError(self.handle, [_first_difference(before, after, ())])
        return text, copy

    def decode(self, text: str) -> Any:
        """Validate a stored JSON payload.

        Raises:
            PayloadError: when the stored JSON no longer matches the payload type.
        """
        try:
            return self._adapter.validate_json(text)
        except ValidationError as exc:
            raise self._errors(exc) from None
