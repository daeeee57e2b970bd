"""Adapter workers: turn drift events into evaluated adapter versions, and publish the outbox."""
