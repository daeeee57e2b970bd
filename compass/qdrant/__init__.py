"""Vector store on Qdrant: Qdrant Edge in-process (embedded default) and the Qdrant server."""
