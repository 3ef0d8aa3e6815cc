"""Adapters that put a supa-vectors store behind a RAG framework's own vector-store interface.

* :mod:`supa_vectors.integrations.langchain` (extra ``langchain``): a LangChain ``VectorStore`` and an
  ``Embeddings`` adapter for the store's embedder.
* :mod:`supa_vectors.integrations.llama_index` (extra ``llama-index``): a LlamaIndex
  ``BasePydanticVectorStore`` and a ``BaseEmbedding`` adapter.

Each wraps a :class:`~supa_vectors.VectorStore` and/or :class:`~supa_vectors.AsyncVectorStore` the app
built: the store's transport, identity (RLS), cache, outbox and filter grammar are the adapter's, which
adds no connection logic and no SQL of its own (docs/decisions/0022-framework-integrations.md). Neither
module is imported by ``import supa_vectors``; importing one without its framework raises an
``ImportError`` that names the extra to install.
"""
