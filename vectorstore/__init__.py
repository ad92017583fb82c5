"""Postgres + pgvector: the ledger, the chunks and their vectors, search."""
