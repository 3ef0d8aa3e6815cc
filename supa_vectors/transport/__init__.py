"""Transports: how an RPC call reaches the database (PostgREST over HTTP, or Postgres directly)."""
