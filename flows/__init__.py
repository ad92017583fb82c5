"""Orchestration: the ingestion pipeline and its Prefect flows. Only this package and the CLI import Prefect."""
