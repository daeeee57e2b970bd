"""Ports: the protocols the loop needs from the outside world.

Unit of work and repositories (:mod:`compass.ports.storage`), the embedder
(:mod:`compass.ports.embedder`), the vector store, the event publisher and the artifact store.
Each has a real implementation grouped by technology (``compass.sql``, ``compass.qdrant``,
``compass.kafka``, ``compass.embedders``, ``compass.lm``); fakes for unit tests live in ``tests/``.
"""
