"""``compass.client``: produce usage events from Python (see :mod:`compass.kafka.client`)."""

from compass.kafka.client import (
    DeliveryFailure,
    ProducerStats,
    SendResult,
    UsageEventProducer,
    prepare_event,
)

__all__ = ["DeliveryFailure", "ProducerStats", "SendResult", "UsageEventProducer", "prepare_event"]
