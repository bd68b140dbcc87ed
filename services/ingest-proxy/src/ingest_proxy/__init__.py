"""ingest-proxy: the HTTP face of the pipeline (the SDKs' /collect endpoint)."""
