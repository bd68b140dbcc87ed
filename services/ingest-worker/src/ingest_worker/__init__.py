"""ingest-worker: receives records from the proxies and makes them durable in a sink."""
