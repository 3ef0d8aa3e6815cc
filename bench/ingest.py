"""Section 2: ingest of precomputed vectors, documents/s.

Same rows for every method: synthetic clustered 384-d unit vectors (see ``clustered``), a 200-character
text clipped from a corpus section, metadata ``{"b10": i % 10, "b100": i % 100}``. Into an empty store
whose HNSW index is absent during the load (built after it, timed on its own), by:

* ``ours (SDK)``: ``VectorStore.upsert`` over the Postgres transport (one bulk_upsert per 1,000-row
  chunk, vectors in binary), as a user with precomputed vectors calls it;
* ``ours (bulk_upsert RPC direct)``: the same RPC called from psycopg with 1,000-row batches;
* ``bulk_upsert before 0024``: the RPC as it was before decision 0024 (its rollback's definition,
  installed under another name), called the same way: the server side's before/after in one run;
* ``vecs upsert``: supabase's client, into its own database on the same server (its own schema);
* ``naive``: one INSERT for the document and one for the embedding, one transaction per document (over
  the first 5,000 rows: its rate does not depend on the size);
* ``batched SQL``: one INSERT ... SELECT FROM unnest(...) statement per 1,000 rows (binary vectors);
* ``binary COPY``: COPY documents and COPY embeddings in binary format, one transaction: the ceiling;
* ``binary COPY, bare table``: COPY into ``items(id, embedding)`` with no text, metadata, generated
  columns or secondary indexes: what the raw pgvector anchors measure, to show what our schema costs.

Every method but naive and vecs runs twice, interleaved, and keeps its better rate. Then, with the index
present, a few thousand more rows through the SDK and through batched SQL, alternating in eighths
(A B B A A B B A), and through vecs into its indexed collection.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo
from psycopg.types.json import Json, Jsonb

from bench._common import (
    DIM,
    F32,
    MODEL,
    REPO_ROOT,
    Report,
    bench_stack,
    clustered,
    database_url,
    load_corpus,
    ratio,
    synthetic_content,
)

BATCH = 1000
ROUNDS = 2
NAIVE_ROWS = 5_000
VECS_DB = "bench_vecs"


@dataclass
class Rows:
    ids: list[str]
    contents: list[str]
    metadata: list[dict[str, Any]]
    vectors: F32

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(
            self.ids[start:stop],
            self.contents[start:stop],
            self.metadata[start:stop],
            self.vectors[start:stop],
        )


def make_rows(count: int, prefix: str, seed: int, texts: Sequence[str]) -> Rows:
    return Rows(
        [f"{prefix}{i}" for i in range(count)],
        [synthetic_content(texts, i) for i in range(count)],
        [{"b10": i % 10, "b100": i % 100} for i in range(count)],
        clustered(count, seed),
    )


def owner_connection(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    register_vector_info(conn, TypeInfo.fetch(conn, "extensions.vector"))
    return conn


def empty_without_index(conn: psycopg.Connection[Any]) -> None:
    """An empty store whose index is dropped by a live bulk load of this connection's, as
    ``begin_bulk_load`` leaves it: a bare DROP INDEX would be undone by the SDK's ``restore_vector_index``
    before its first write (decision 0012), and the SDK would load through the index."""
    conn.execute("truncate public.documents restart identity cascade")
    conn.execute("select public.begin_bulk_load(1000000000)")
    conn.execute("checkpoint")


def build_index(conn: psycopg.Connection[Any]) -> float:
    start = time.perf_counter()
    conn.execute("select public.finish_bulk_load()")
    return time.perf_counter() - start


BEFORE_RPC = "bench_bulk_upsert_before"


def install_rpc_before(conn: psycopg.Connection[Any]) -> None:
    """bulk_upsert as it was before decision 0024 (the rollback of 20261203000500 holds it), under
    another name, so that both versions run against the same rows in one run."""
    text = (REPO_ROOT / "supabase" / "rollbacks" / "20261203000500_bulk_upsert_speed.sql").read_text()
    body = text[text.index("create or replace function public.bulk_upsert(") :]
    body = body.replace("public.bulk_upsert(", f"public.{BEFORE_RPC}(", 1).replace(
        "bulk_upsert.", f"{BEFORE_RPC}."
    )
    conn.execute(body)


# --------------------------------------------------------------------------------------------------
# The methods. Each loads ``rows`` and returns nothing; the caller times it.


def load_copy(conn: psycopg.Connection[Any], rows: Rows) -> None:
    vector_oid = TypeInfo.fetch(conn, "extensions.vector").oid  # type: ignore[union-attr]
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(
            "copy public.documents (external_id, content, metadata) from stdin (format binary)"
        ) as cp:
            cp.set_types(["text", "text", "jsonb"])
            for external_id, content, meta in zip(rows.ids, rows.contents, rows.metadata, strict=True):
                cp.write_row((external_id, content, Jsonb(meta)))
        ids = dict(cur.execute("select external_id, id from public.documents").fetchall())
        with cur.copy(
            "copy public.embeddings (document_id, model, embedding) from stdin (format binary)"
        ) as cp:
            cp.set_types(["int8", "text", vector_oid])
            for external_id, vector in zip(rows.ids, rows.vectors, strict=True):
                cp.write_row((ids[external_id], MODEL, vector))


def load_copy_bare(conn: psycopg.Connection[Any], rows: Rows) -> None:
    vector_oid = TypeInfo.fetch(conn, "extensions.vector").oid  # type: ignore[union-attr]
    conn.execute("drop table if exists public.bench_items")
    conn.execute(
        "create table public.bench_items (id bigint generated always as identity primary key,"
        " embedding extensions.vector(384) not null)"
    )
    copy = "copy public.bench_items (embedding) from stdin (format binary)"
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
        cp.set_types([vector_oid])
        for vector in rows.vectors:
            cp.write_row((vector,))


BATCHED_SQL = """
with d as (
  insert into public.documents (external_id, content, metadata)
  select * from unnest(%s::text[], %s::text[], %s::jsonb[])
  returning id, external_id
)
insert into public.embeddings (document_id, model, embedding)
select d.id, %s, v.embedding
  from d join unnest(%s::text[], %b::extensions.vector[]) as v(external_id, embedding) using (external_id)
"""


def load_batched(conn: psycopg.Connection[Any], rows: Rows) -> None:
    for start in range(0, len(rows), BATCH):
        part = rows.slice(start, start + BATCH)
        conn.execute(
            BATCHED_SQL,
            [part.ids, part.contents, [Jsonb(m) for m in part.metadata], MODEL, part.ids, list(part.vectors)],
        )


def load_naive(conn: psycopg.Connection[Any], rows: Rows) -> None:
    for external_id, content, meta, vector in zip(
        rows.ids, rows.contents, rows.metadata, rows.vectors, strict=True
    ):
        with conn.transaction():
            row = conn.execute(
                "insert into public.documents (external_id, content, metadata)"
                " values (%s, %s, %s) returning id",
                [external_id, content, Jsonb(meta)],
            ).fetchone()
            assert row is not None
            conn.execute(
                "insert into public.embeddings (document_id, model, embedding) values (%s, %s, %b)",
                [row[0], MODEL, vector],
            )


def load_rpc(conn: psycopg.Connection[Any], rows: Rows, rpc: str = "bulk_upsert") -> None:
    for start in range(0, len(rows), BATCH):
        part = rows.slice(start, start + BATCH)
        docs = [
            {"external_id": i, "content": c, "metadata": m}
            for i, c, m in zip(part.ids, part.contents, part.metadata, strict=True)
        ]
        conn.execute(f"select count(*) from public.{rpc}(%s, %b)", [Json(docs), list(part.vectors)])


# The SDK as it was before decision 0024: its code from this commit (git archive), run in a subprocess
# against the bulk_upsert of that time (installed as BEFORE_RPC), so both SDKs load the same rows in one run.
BEFORE_COMMIT = "619eb81"


def sdk_before_loader(url: str, workdir: Path) -> Callable[[Rows], float] | None:
    """A loader that returns the seconds the old SDK's ``upsert`` took (timed inside the subprocess, so
    start-up and data loading are not counted); None when git cannot give the old code."""
    code = workdir / "before"
    code.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", BEFORE_COMMIT, "supa_vectors"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)

    def load(rows: Rows) -> float:
        data = workdir / "rows.pkl"
        data.write_bytes(pickle.dumps(rows))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO_ROOT)])}
        done = subprocess.run(
            [sys.executable, "-m", "bench.ingest", "--sdk-before", url, str(data)],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return float(done.stdout.strip().splitlines()[-1])

    return load


def _sdk_before_main(url: str, data: str) -> None:
    """In the subprocess: the old SDK's upsert of the pickled rows, sent to BEFORE_RPC; prints seconds."""
    import dataclasses

    from supa_vectors._core import rpcs

    rpcs.BULK_UPSERT = dataclasses.replace(rpcs.BULK_UPSERT, name=BEFORE_RPC)
    rows = pickle.loads(Path(data).read_bytes())  # our own file, written just before
    load, close = sdk_loader(url)
    start = time.perf_counter()
    load(rows)
    print(time.perf_counter() - start)
    close()


def sdk_loader(url: str) -> tuple[Callable[[Rows], None], Callable[[], None]]:
    from supa_vectors import VectorStore
    from supa_vectors.transport.postgres import PostgresTransport

    store = VectorStore(PostgresTransport(url))
    store.settings()  # read once per store; not part of any load

    def load(rows: Rows) -> None:
        documents = [
            {"id": i, "content": c, "metadata": m, "embedding": v}
            for i, c, m, v in zip(rows.ids, rows.contents, rows.metadata, rows.vectors, strict=True)
        ]
        results = store.upsert(documents, bulk=False)
        assert len(results) == len(rows)

    return load, store.close


def vecs_missing() -> str | None:
    """Why vecs cannot run here, or None. It is installed without its dependency pins (see
    BENCHMARKS.md): vecs 0.4.5 pins pgvector 0.3.*, which the SDK's tests do not pass with."""
    try:
        import vecs  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        return f"vecs is not installed ({exc}); pip install --no-deps vecs==0.4.5"
    return None


class VecsTarget:
    """vecs in a database of its own (it creates schema ``vecs`` and the extension itself)."""

    def __init__(self, url: str) -> None:
        import vecs

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {VECS_DB}")
            conn.execute(f"create database {VECS_DB} template template1")
        # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; vecs' SET statements need psycopg2.
        self.client = vecs.create_client(
            database_url(url, VECS_DB).replace("postgresql://", "postgresql+psycopg2://", 1)
        )
        self.collection: Any = None

    def fresh(self) -> None:
        self.client.delete_collection("docs")
        self.collection = self.client.get_or_create_collection(name="docs", dimension=DIM)

    def load(self, rows: Rows) -> None:
        # vecs has no content column: the text goes into the metadata, as its users store it.
        self.collection.upsert(
            records=[
                (i, v, {"content": c, **m})
                for i, c, m, v in zip(rows.ids, rows.contents, rows.metadata, rows.vectors, strict=True)
            ]
        )

    def build_index(self) -> float:
        import vecs

        start = time.perf_counter()
        self.collection.create_index(
            measure=vecs.IndexMeasure.cosine_distance,
            method=vecs.IndexMethod.hnsw,
            index_arguments=vecs.IndexArgsHNSW(m=16, ef_construction=64),
        )
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.disconnect()


def _rate(rows: int, fn: Callable[[], float | None]) -> float:
    """Rows per second; ``fn`` may return the seconds it measured itself (a subprocess's load)."""
    start = time.perf_counter()
    spent = fn()
    return rows / (spent if spent is not None else time.perf_counter() - start)


def run(quick: bool) -> dict[str, float]:
    report = Report("ingest")
    texts = [d.content for d in load_corpus()]
    sizes = [2_000] if quick else [10_000, 100_000]
    extra = 200 if quick else 2_000
    warnings.filterwarnings("ignore", module="vecs")
    with bench_stack() as url:
        conn = owner_connection(url)
        install_rpc_before(conn)
        sdk_load, sdk_close = sdk_loader(url)
        workdir = tempfile.TemporaryDirectory(prefix="supa-vectors-bench-ingest-")
        sdk_before = sdk_before_loader(url, Path(workdir.name))
        if sdk_before is None:
            report.note(f"the SDK before 0024 skipped: git cannot give commit {BEFORE_COMMIT}")
        missing = vecs_missing()
        target = VecsTarget(url) if missing is None else None
        if missing:
            report.note(f"vecs baseline skipped: {missing}")
        nan = float("nan")
        try:
            for size in sizes:
                rows = make_rows(size, "d", seed=size, texts=texts)
                label = f"{size // 1000}k" if size >= 1000 else str(size)
                load = os.getloadavg()
                report.heading(f"{label} rows x {DIM}-d into an empty store, index absent (rows/s)")
                report.note(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
                # naive's rate does not depend on the size (one row, one commit); at 100k it would take
                # longer than everything else together on a busy machine.
                naive_rows = rows.slice(0, min(size, NAIVE_ROWS))
                empty_without_index(conn)
                rates: dict[str, float] = {
                    "naive": _rate(len(naive_rows), partial(load_naive, conn, naive_rows))
                }
                methods: list[tuple[str, Callable[[], float | None]]] = [
                    ("binary COPY, bare table", partial(load_copy_bare, conn, rows)),
                    ("binary COPY", partial(load_copy, conn, rows)),
                    ("batched SQL", partial(load_batched, conn, rows)),
                    ("ours bulk_upsert RPC", partial(load_rpc, conn, rows)),
                    ("bulk_upsert before 0024", partial(load_rpc, conn, rows, BEFORE_RPC)),
                    ("ours SDK", partial(sdk_load, rows)),  # last: the index is built over its load
                ]
                if sdk_before is not None:
                    methods.insert(-1, ("ours SDK before 0024", partial(sdk_before, rows)))
                else:
                    rates["ours SDK before 0024"] = nan
                # Interleaved rounds, best of them: on a shared machine other jobs only ever slow a run.
                for _ in range(1 if quick else ROUNDS):
                    for name, fn in methods:
                        empty_without_index(conn)
                        rates[name] = max(rates.get(name, 0.0), _rate(size, fn))
                report.note(
                    f"best of {1 if quick else ROUNDS} interleaved rounds; naive over the first "
                    f"{len(naive_rows):,} rows; load average at the end: {os.getloadavg()[0]:.2f}"
                )
                conn.execute("drop table public.bench_items")
                rates["vecs upsert"], vecs_build = nan, nan
                if target is not None:
                    target.fresh()
                    rates["vecs upsert"] = _rate(size, lambda r=rows, t=target: t.load(r))  # type: ignore[misc]
                    vecs_build = target.build_index()

                # The store holds the last load (the SDK's): build the index over it, as
                # finish_bulk_load does after a bulk load.
                ours_build = build_index(conn)
                for name in (
                    "ours SDK",
                    "ours SDK before 0024",
                    "ours bulk_upsert RPC",
                    "bulk_upsert before 0024",
                ):
                    report.figure(
                        f"{name} {label}",
                        rates[name],
                        "rows/s",
                        {
                            "RPC": ratio(rates[name], rates["ours bulk_upsert RPC"]),
                            "RPC before 0024": ratio(rates[name], rates["bulk_upsert before 0024"]),
                            "vecs": ratio(rates[name], rates["vecs upsert"]),
                            "naive": ratio(rates[name], rates["naive"]),
                            "batched SQL": ratio(rates[name], rates["batched SQL"]),
                            "binary COPY": ratio(rates[name], rates["binary COPY"]),
                        },
                    )
                for name in ("vecs upsert", "naive", "batched SQL", "binary COPY", "binary COPY, bare table"):
                    report.figure(
                        f"{name} {label}",
                        rates[name],
                        "rows/s",
                        {"binary COPY": ratio(rates[name], rates["binary COPY"])},
                    )
                report.heading(f"{label}: HNSW build after the load (m=16, ef_construction=64)")
                report.figure(
                    f"ours index build {label}",
                    ours_build,
                    "s",
                    {"vecs build": ratio(ours_build, vecs_build)},
                )
                report.figure(f"vecs index build {label}", vecs_build, "s")
                e2e = size / (size / rates["ours SDK"] + ours_build)
                vecs_e2e = size / (size / rates["vecs upsert"] + vecs_build)
                report.figure(
                    f"ours SDK load + build {label}",
                    e2e,
                    "rows/s",
                    {"vecs load + build": ratio(e2e, vecs_e2e)},
                )

                # With the index present: SDK and batched SQL in eighths, in the order A B B A A B B A,
                # so that neither always writes into the smaller graph or the quieter minute.
                more = make_rows(extra, f"x{size}-", seed=size + 1, texts=texts)
                spent = {"ours SDK": 0.0, "batched SQL": 0.0}
                eighth = extra // 8
                for q in range(8):
                    part = more.slice(q * eighth, (q + 1) * eighth)
                    name = "ours SDK" if q % 4 in (0, 3) else "batched SQL"
                    start = time.perf_counter()
                    (sdk_load if name == "ours SDK" else lambda r: load_batched(conn, r))(part)
                    spent[name] += time.perf_counter() - start
                vecs_more = make_rows(extra // 2, f"x{size}-", seed=size + 1, texts=texts)
                vecs_rate = (
                    nan if target is None else _rate(len(vecs_more), lambda r=vecs_more, t=target: t.load(r))  # type: ignore[misc]
                )
                with_index = {n: (extra / 2) / s for n, s in spent.items()}
                report.heading(
                    f"{extra} more rows into the {label} store with its HNSW index present (rows/s)"
                )
                report.figure(
                    f"ours SDK into indexed {label}",
                    with_index["ours SDK"],
                    "rows/s",
                    {
                        "batched SQL": ratio(with_index["ours SDK"], with_index["batched SQL"]),
                        "vecs": ratio(with_index["ours SDK"], vecs_rate),
                    },
                )
                report.figure(f"batched SQL into indexed {label}", with_index["batched SQL"], "rows/s")
                report.figure(f"vecs upsert into indexed {label}", vecs_rate, "rows/s")
        finally:
            workdir.cleanup()
            sdk_close()
            if target is not None:
                target.close()
            conn.close()
    return report.values


if __name__ == "__main__" and sys.argv[1:2] == ["--sdk-before"]:
    _sdk_before_main(sys.argv[2], sys.argv[3])
