"""Kafka: the embedded Tansu broker, producer/consumer helpers and the outbox relay.

Shared by ``streams/`` and ``workers/`` so that neither imports the other.
"""
