"""Edges to real services: the Kafka-protocol broker, PostgreSQL and the vector store.

Each has an embedded default that starts on this machine (Tansu, pgserver, Qdrant Edge) and a
production form chosen by a ``COMPASS_`` setting; the rest of the code sees one interface.
"""
