"""The client's core: what every operation is, independent of how its I/O is done.

Layers, each calling only downward (see docs/decisions/0016-one-flow-per-operation.md)::

    VectorStore / AsyncVectorStore     one line per method: run a flow, perform its I/O
            |
    _core.flows                        one flow per operation: checks, RPC parameters, parsing
            |
    cache (offline layer)              wraps a flow's RPCs: results cache, breaker, outbox, mirror
            |
    _core.ops, _core.rpcs              the calls a flow yields; the one table of RPCs
            |
    transport (Postgres, PostgREST)    moves one RPC; reads the table for its shape
"""
