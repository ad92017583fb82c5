"""Token-aware chunking and the embedding model."""
