"""Which graph ``OnnxEmbedder`` runs (fp32 or int8), and that the two stay one vector space.

The choice depends on the CPU, so every test here names the CPU features it pretends to have (or
checks a choice that does not depend on them): the suite gives the same answers on any machine.
The cross-precision checks embed a handful of texts, never the corpus; the corpus-wide figures
(recall@10 and MRR with documents of one variant and queries of the other) are in bench/quality.py
and docs/decisions/0026-int8-by-cpu.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from supa_vectors.embedding import MODEL_ID, PRECISION_ENV, OnnxEmbedder
from supa_vectors.embedding import precision as precision_module
from supa_vectors.embedding.precision import choose_variant, cpu_features
from supa_vectors.errors import ConfigurationError, InvalidInputError

ZEN1 = {"sse4_2", "avx", "avx2", "fma"}  # the AVX2 EPYC the int8 graph gave nothing on
ICE_LAKE = ZEN1 | {"avx512f", "avx512bw", "avx512_vnni"}
ALDER_LAKE = ZEN1 | {"avx_vnni"}
SAPPHIRE_RAPIDS = ICE_LAKE | {"amx_tile", "amx_int8", "amx_bf16"}


@pytest.mark.parametrize(
    ("features", "variant"),
    [
        (ICE_LAKE, "int8"),
        (ALDER_LAKE, "int8"),
        (SAPPHIRE_RAPIDS, "int8"),
        ({"amx_int8"}, "int8"),
        (ZEN1, "fp32"),
        (ZEN1 | {"avx512f", "avx512bw"}, "fp32"),  # AVX-512 without VNNI: no int8 dot product
        (set(), "fp32"),  # unknown CPU (Windows, ARM): the exact graph
    ],
)
def test_auto_picks_int8_only_with_int8_dot_products(features: set[str], variant: str) -> None:
    choice = choose_variant("auto", features=features, environ={})
    assert choice.variant == variant
    assert choice.reason.startswith("auto: ")
    if variant == "int8":
        assert any(flag in choice.reason for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def test_an_explicit_precision_wins_over_the_cpu_and_the_environment() -> None:
    env = {PRECISION_ENV: "int8"}
    assert choose_variant("fp32", features=ICE_LAKE, environ=env).variant == "fp32"
    assert choose_variant("int8", features=ZEN1, environ={PRECISION_ENV: "fp32"}).variant == "int8"
    assert choose_variant("int8", features=ZEN1, environ={}).reason == "asked for"


@pytest.mark.parametrize(
    ("value", "features", "variant"),
    [
        ("fp32", ICE_LAKE, "fp32"),
        ("int8", ZEN1, "int8"),
        (" INT8 ", ZEN1, "int8"),
        ("auto", ICE_LAKE, "int8"),
        ("auto", ZEN1, "fp32"),
        ("", ICE_LAKE, "int8"),
    ],
)
def test_the_environment_overrides_auto(value: str, features: set[str], variant: str) -> None:
    choice = choose_variant("auto", features=features, environ={PRECISION_ENV: value})
    assert choice.variant == variant
    if value.strip().lower() in ("fp32", "int8"):
        assert choice.reason == f"{PRECISION_ENV}={value.strip().lower()}"


@pytest.mark.parametrize("value", ["fp16", "int4", "true", "quantized"])
def test_a_bad_environment_value_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match=PRECISION_ENV):
        choose_variant("auto", features=ICE_LAKE, environ={PRECISION_ENV: value})


@pytest.mark.parametrize("value", ["fp16", "INT8", "", None, True, 8])
def test_a_bad_precision_argument_is_an_invalid_input_error(value: object) -> None:
    with pytest.raises(InvalidInputError, match="precision"):
        OnnxEmbedder(precision=value)  # type: ignore[arg-type]


def test_the_embedder_records_the_variant_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(precision_module, "cpu_features", lambda: frozenset(ICE_LAKE))
    embedder = OnnxEmbedder()
    assert (embedder.precision, embedder.variant) == ("auto", "int8")
    assert "avx512_vnni" in embedder.variant_reason
    assert "variant='int8'" in repr(embedder)
    assert "avx512_vnni" in repr(embedder)

    monkeypatch.setattr(precision_module, "cpu_features", lambda: frozenset(ZEN1))
    assert OnnxEmbedder().variant == "fp32"
    monkeypatch.setenv(PRECISION_ENV, "int8")
    assert OnnxEmbedder().variant == "int8"
    assert OnnxEmbedder(precision="fp32").variant == "fp32"
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    with pytest.raises(ConfigurationError):
        OnnxEmbedder()


def test_both_variants_name_the_same_model() -> None:
    """The store checks ``model_id``: a store written with one variant accepts the other's queries."""
    fp32, int8 = OnnxEmbedder(precision="fp32"), OnnxEmbedder(precision="int8")
    assert fp32.model_id == int8.model_id == MODEL_ID
    assert fp32.dimension == int8.dimension == 384


def test_cpu_features_read_the_linux_flags_and_know_nothing_elsewhere() -> None:
    assert precision_module._cpu_features("win32") == frozenset()
    flags = next((line.split(":", 1)[1].split() for line in _cpuinfo_lines() if line.startswith("flags")), [])
    assert precision_module._cpu_features("linux") == frozenset(flags)
    assert isinstance(cpu_features(), frozenset)


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


# --- one vector space: a few texts through both graphs -------------------------------------------

QUERIES = [
    "How do I create an index on a table?",
    "vacuum reclaims storage",
    "write-ahead log durability",
]
DOCUMENTS = [
    "CREATE INDEX constructs an index on the specified column(s) of the specified relation.",
    "VACUUM reclaims storage occupied by dead tuples left behind by updates and deletes.",
    "Write-Ahead Logging (WAL) ensures that changes are logged before data files are written.",
    "The cat sleeps on the sofa for most of the afternoon.",
    "Tables are partitioned by range, list or hash of a partition key.",
]


def test_documents_of_one_variant_are_found_by_queries_of_the_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fp32, int8 = OnnxEmbedder(precision="fp32"), OnnxEmbedder(precision="int8")
    with caplog.at_level(logging.INFO, logger="supa_vectors.embedding"):
        int8.load()
    assert any("int8, asked for" in record.getMessage() for record in caplog.records)
    texts = QUERIES + DOCUMENTS
    a, b = fp32.embed(texts), int8.embed(texts)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.97, cosines  # measured min 0.977 over whole corpus sections
    q = len(QUERIES)
    same = np.argsort(-(a[:q] @ a[q:].T), axis=1)
    for queries, documents in ((a[:q], b[q:]), (b[:q], a[q:])):
        cross = np.argsort(-(queries @ documents.T), axis=1)
        assert (cross[:, 0] == np.arange(q)).all()  # each query's own document first
        assert (cross[:, :3] == same[:, :3]).all()
