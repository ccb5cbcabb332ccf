"""The live page served at ``/`` of a ``--metrics`` address (placeholder:
the page with plots replaces it)."""

PAGE = b"""<!doctype html><html><head><meta charset="utf-8">
<title>wallaroo</title></head><body><p>The metrics are at
<a href="/metrics">/metrics</a>.</p></body></html>
"""
