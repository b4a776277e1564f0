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

from pydantic import TypeAdapter, ValidationError
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


def _find_nul(value: Any, path: tuple[int | str, ...]) -> str | None:
    """The path of the first string (or key) holding a NUL character, or None."""
    if isinstance(value, str):
        return _loc(path) if "\x00" in value else None
    items: Any = ()
    if isinstance(value, Mapping):
        for key in value:
            if isinstance(key, str) and "\x00" in key:
                return _loc((*path, key))
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    for key, item in items:
        found = _find_nul(item, (*path, key))
        if found is not None:
            return found
    return None


class PayloadCodec:
    """Validates, encodes and decodes the payloads of one sidecar."""

    __slots__ = ("_adapter", "handle", "payload_type")

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
        # The common case: the plain data dumped from the copy read back from the JSON equals
        # the plain data dumped from what was validated (builtin values compared, never a
        # model's own __eq__). A non-finite float either changes on the way (to null, or
        # to a NaN that equals nothing) or shows in the text as NaN/Infinity; a NUL shows
        # as \u0000. Those, and anything that fails or changes, take the careful path,
        # which finds the field and says why.
        try:
            text = adapter.dump_json(validated).decode()
            copy = adapter.validate_json(text)
            if (
                "NaN" not in text
                and "Infinity" not in text
                and "\\u0000" not in text
                and adapter.dump_python(copy) == adapter.dump_python(validated)
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
        nul = _find_nul(before, ())
        if nul is not None:
            raise PayloadError(
                self.handle,
                [(nul, "a NUL character (\\u0000) cannot be stored (PostgreSQL refuses it)")],
            )
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
