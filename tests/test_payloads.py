"""Payloads: validated, JSON round-tripped, and refused with the field path when they would
not survive."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import AwareDatetime, BaseModel, ConfigDict

from sidecars import PayloadError
from sidecars._payloads import PayloadCodec


class Inner(BaseModel):
    ratio: float


class Order(BaseModel):
    id: int
    lines: list[Inner] = []
    extra: dict[str, Any] = {}
    blob: Any = None
    at: AwareDatetime | None = None


CODEC = PayloadCodec("orders", Order)


def test_round_trip_returns_json_and_a_fresh_copy() -> None:
    """encode returns JSON text and a copy rebuilt from it, never the caller's object."""
    order = Order(id=1, lines=[Inner(ratio=0.5)], at=datetime(2030, 1, 1, tzinfo=timezone.utc))
    text, copy = CODEC.encode(order)
    assert copy == order
    assert copy is not order
    assert copy.lines[0] is not order.lines[0]
    assert CODEC.decode(text) == order


def test_dicts_are_validated_into_the_model() -> None:
    """A plain dict is accepted when it validates as the model."""
    _, copy = CODEC.encode({"id": "7"})
    assert copy == Order(id=7)


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        (Order(id=1, lines=[Inner(ratio=math.nan)]), "lines.0.ratio", "NaN or Infinity"),
        (Order(id=1, extra={"a": [1, math.inf]}), "extra.a.1", "NaN or Infinity"),
        (Order(id=1, blob=-math.inf), "blob", "NaN or Infinity"),
        (Order(id=1, blob=b"\xff\xfe"), "blob", "not UTF-8"),
        (Order(id=1, blob=b"plain"), "blob", "raw bytes"),
        (Order(id=1, blob=(1, 2)), "blob", "tuple"),
        (Order(id=1, blob={1, 2}), "blob", "set"),
        ({"id": "x"}, "id", "valid integer"),
        ({"lines": []}, "id", "Field required"),
        ({"id": 1, "at": datetime(2030, 1, 1)}, "at", "timezone"),
    ],
)
def test_values_that_would_not_survive_are_refused(value: Any, path: str, fragment: str) -> None:
    """Each bad value raises PayloadError naming the handle and the field path."""
    with pytest.raises(PayloadError) as info:
        CODEC.encode(value)
    message = str(info.value)
    assert "'orders'" in message
    assert f"{path}:" in message
    assert fragment in message
    assert info.value.handle == "orders"
    assert info.value.errors[0][0] == path


def test_non_model_payload_types() -> None:
    """Payloads need not be models: any type pydantic validates works."""
    codec = PayloadCodec("ints", list[int])
    text, copy = codec.encode([1, "2"])
    assert text == "[1,2]"
    assert copy == [1, 2]
    with pytest.raises(PayloadError, match=r"'ints'.*1:"):
        codec.encode([1, "two"])


def test_no_payload() -> None:
    """A sidecar without payload takes None."""
    codec = PayloadCodec("none", None)
    assert codec.encode(None) == ("null", None)
    with pytest.raises(PayloadError):
        codec.encode(3)


def test_decode_reports_payloads_that_no_longer_validate() -> None:
    """Stored JSON that no longer fits the model raises PayloadError with the field."""
    with pytest.raises(PayloadError, match=r"'orders'.*id:"):
        CODEC.decode('{"id": "not a number"}')


class _Entity(BaseModel):
    """A model whose equality compares only its id, as entity models often do."""

    id: int
    data: Any = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Entity) and other.id == self.id

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "NaN or Infinity"),
        (float("inf"), "NaN or Infinity"),
        ((1, 2), "comes back from JSON"),
        ({"x"}, "comes back from JSON"),
        (b"raw", "raw bytes"),
        ("a\x00b", "NUL character"),
    ],
)
def test_a_models_own_equality_never_hides_a_change(value: object, reason: str) -> None:
    """Values that change in JSON are refused even when the model's __eq__ would call the
    copy equal (the check compares plain dumped data), and so are NUL characters."""
    codec = PayloadCodec("entity", _Entity)
    with pytest.raises(PayloadError, match=reason):
        codec.encode(_Entity(id=1, data=value))
    text, copy = codec.encode(_Entity(id=1, data={"ok": [1, 2.5, "NaN as a word"]}))
    assert copy.data == {"ok": [1, 2.5, "NaN as a word"]}
    assert text == '{"id":1,"data":{"ok":[1,2.5,"NaN as a word"]}}'


def test_infinity_serialized_as_a_string_is_still_refused() -> None:
    """A model that dumps non-finite floats as strings still cannot send them."""

    class Loose(BaseModel):
        model_config = ConfigDict(ser_json_inf_nan="strings")
        x: float

    codec = PayloadCodec("loose", Loose)
    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(PayloadError, match=r"x: .* is not allowed"):
            codec.encode(Loose(x=bad))
    assert codec.encode(Loose(x=1.5))[0] == '{"x":1.5}'
