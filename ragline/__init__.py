"""ragline: a resilient RAG ingestion pipeline on Prefect and Postgres + pgvector."""

__version__ = "0.1.0"
