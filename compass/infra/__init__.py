"""The embedded service stack: broker, PostgreSQL and vector store started as one for the demo.

Each service has an embedded default that starts on this machine (Tansu, pgserver, Qdrant Edge)
and a production form chosen by a ``COMPASS_`` setting; the code for each lives with its
technology (``compass.kafka``, ``compass.sql``, ``compass.qdrant``).
"""
