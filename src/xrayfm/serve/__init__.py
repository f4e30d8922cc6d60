"""Serving: an HTTP API (FastAPI) with dynamic micro-batching and a web page."""
