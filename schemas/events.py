"""Store events: orders, prices, stock and payments, as ingest accepts them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import AwareDatetime, Field, model_validator

from schemas.common import Actor
from schemas.envelope import Contract, Currency, Envelope, Key, Money


class StoreEvent(Envelope):
    """An event about one entity; ``subject`` defaults to that entity's key.

    A client may leave out ``subject``; it is taken from ``data.<key_field>``.
    If given, it must agree with it, so the record key never lies.
    """

    key_field: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _fill_subject(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("subject"):
            data = values.get("data")
            if isinstance(data, dict) and data.get(cls.key_field):
                values = {**values, "subject": str(data[cls.key_field])}
        return values

    @model_validator(mode="after")
    def _subject_matches_key(self) -> StoreEvent:
        key = getattr(self.data, self.key_field)
        if self.subject != str(key):
            raise ValueError(f"subject must equal data.{self.key_field} ({key!r}), got {self.subject!r}")
        return self


# --- orders -----------------------------------------------------------------


class OrderLine(Contract):
    sku: Key
    quantity: int = Field(gt=0)
    unit_price: Money


class OrderPlacedData(Contract):
    order_id: Key
    customer_id: Key
    total: Money
    currency: Currency
    lines: list[OrderLine] = Field(default_factory=list)
    channel: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list)


class OrderPaidData(Contract):
    order_id: Key
    amount: Money
    currency: Currency


class OrderCancelledData(Contract):
    order_id: Key
    reason: str = Field(min_length=1, max_length=500)


class RefundRequestedData(Contract):
    order_id: Key
    amount: Money
    currency: Currency
    reason: str = Field(min_length=1, max_length=500)


class FulfillmentDelayedData(Contract):
    order_id: Key
    shipment_id: Key | None = None
    promised_by: AwareDatetime
    expected_by: AwareDatetime | None = None


class _OrderEvent(StoreEvent):
    key_field: ClassVar[str] = "order_id"


class OrderPlaced(_OrderEvent):
    type: Literal["OrderPlaced"]
    data: OrderPlacedData


class OrderPaid(_OrderEvent):
    type: Literal["OrderPaid"]
    data: OrderPaidData


class OrderCancelled(_OrderEvent):
    type: Literal["OrderCancelled"]
    data: OrderCancelledData


class RefundRequested(_OrderEvent):
    type: Literal["RefundRequested"]
    data: RefundRequestedData


class FulfillmentDelayed(_OrderEvent):
    type: Literal["FulfillmentDelayed"]
    data: FulfillmentDelayedData


OrderEvent = Annotated[
    Union[OrderPlaced, OrderPaid, OrderCancelled, RefundRequested, FulfillmentDelayed],
    Field(discriminator="type"),
]

# --- prices -----------------------------------------------------------------


class PriceChangedData(Contract):
    sku: Key
    old_price: Money | None = None
    new_price: Money
    currency: Currency
    cost: Money | None = Field(default=None, description="Unit cost, when the store shares it")


class PriceChanged(StoreEvent):
    key_field: ClassVar[str] = "sku"
    type: Literal["PriceChanged"]
    data: PriceChangedData


PriceEvent = Annotated[Union[PriceChanged], Field(discriminator="type")]

# --- stock ------------------------------------------------------------------


class StockChangedData(Contract):
    sku: Key
    location: str = Field(default="default", min_length=1, max_length=100)
    on_hand: int = Field(ge=0)
    reorder_point: int | None = Field(
        default=None, ge=0, description="Per-sku threshold; the rules service's default applies when absent"
    )


class StockChanged(StoreEvent):
    key_field: ClassVar[str] = "sku"
    type: Literal["StockChanged"]
    data: StockChangedData


StockEvent = Annotated[Union[StockChanged], Field(discriminator="type")]

# --- payments ---------------------------------------------------------------


class PaymentCapturedData(Contract):
    order_id: Key
    payment_id: Key
    amount: Money
    currency: Currency
    gateway: str = Field(min_length=1, max_length=100)
    expected_amount: Money | None = Field(default=None, description="What the store asked the gateway to capture")


class PaymentFailedData(PaymentCapturedData):
    reason: str = Field(min_length=1, max_length=500)


class PaymentCallbackFailedData(Contract):
    order_id: Key
    gateway: str = Field(min_length=1, max_length=100)
    error: str = Field(min_length=1, max_length=2000)
    raw_callback: str = Field(description="The gateway's callback body, kept verbatim for replay")


class PaymentCallbackReplayRequestedData(Contract):
    order_id: Key
    gateway: str = Field(min_length=1, max_length=100)
    raw_callback: str = Field(description="The callback body as the gateway first sent it")
    replay_id: uuid.UUID
    exception_id: uuid.UUID = Field(description="The exception queue entry it was replayed from")
    requested_by: Actor


class _PaymentEvent(StoreEvent):
    key_field: ClassVar[str] = "order_id"


class PaymentCaptured(_PaymentEvent):
    type: Literal["PaymentCaptured"]
    data: PaymentCapturedData


class PaymentFailed(_PaymentEvent):
    type: Literal["PaymentFailed"]
    data: PaymentFailedData


class PaymentCallbackFailed(_PaymentEvent):
    type: Literal["PaymentCallbackFailed"]
    data: PaymentCallbackFailedData


class PaymentCallbackReplayRequested(_PaymentEvent):
    """A person asked, from the exception queue, for a failed callback to be processed again."""

    type: Literal["PaymentCallbackReplayRequested"]
    data: PaymentCallbackReplayRequestedData


PaymentEvent = Annotated[
    Union[PaymentCaptured, PaymentFailed, PaymentCallbackFailed, PaymentCallbackReplayRequested],
    Field(discriminator="type"),
]

EVENT_CLASSES: tuple[type[StoreEvent], ...] = (
    OrderPlaced,
    OrderPaid,
    OrderCancelled,
    RefundRequested,
    FulfillmentDelayed,
    PriceChanged,
    StockChanged,
    PaymentCaptured,
    PaymentFailed,
    PaymentCallbackFailed,
    PaymentCallbackReplayRequested,
)
