"""Ray Data (extra ``[ray]``): ``embed_dataset`` on a local Ray cluster of 2 actors equals the embedder run in this
process (vectors and late-chunk spans), and ``embed_to_parquet`` resumes an interrupted run."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="install longctx-plugins[ray] for the Ray tests")

from longctx_plugins import LongContextEmbedder  # noqa: E402
from longctx_plugins.distributed import embed_dataset, embed_to_parquet  # noqa: E402
from longctx_plugins.longembed.synthetic import sotu_sentences  # noqa: E402

pytestmark = pytest.mark.ray
SETTINGS = dict(model="default", method="pi", target_length=1024)
ROWS = [{"id": i, "text": " ".join(sotu_sentences()[i * 4 : i * 4 + 2 + i % 7])} for i in range(50)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local():
    return LongContextEmbedder(SETTINGS["model"], method=SETTINGS["method"], target_length=SETTINGS["target_length"])


def test_two_actors_equal_one_process(cluster, local):
    ds = ray.data.from_items(ROWS)
    rows = sorted(
        embed_dataset(ds, **SETTINGS, late_chunk=True, chunk_size=32, concurrency=2, batch_size=8).take_all(),
        key=lambda r: r["id"],
    )
    assert [r["id"] for r in rows] == list(range(len(ROWS)))
    texts = [r["text"] for r in ROWS]
    np.testing.assert_allclose(np.stack([r["embedding"] for r in rows]), local.encode_documents(texts), atol=1e-5)
    for row, chunked in zip(rows, local.late_chunk(texts, chunk_size=32)):
        assert row["chunk_spans"].tolist() == [list(s) for s in chunked["spans"]]
        np.testing.assert_allclose(row["chunk_embeddings"], chunked["embeddings"], atol=1e-5)


def test_embed_to_parquet_resumes(cluster, tmp_path, local):
    out = str(tmp_path / "vectors")
    assert embed_to_parquet(ray.data.from_items(ROWS[:20]), out, **SETTINGS, concurrency=2) == 20
    assert embed_to_parquet(ray.data.from_items(ROWS), out, **SETTINGS, concurrency=2) == 30  # only the rest
    table = ray.data.read_parquet(out).to_pandas().sort_values("id")
    assert table["id"].tolist() == list(range(len(ROWS)))
    np.testing.assert_allclose(
        np.stack(table["embedding"].to_list()), local.encode_documents([r["text"] for r in ROWS]), atol=1e-5
    )
    with pytest.raises(ValueError, match="no column 'doc_id'"):
        embed_to_parquet(ray.data.from_items(ROWS), out, id_column="doc_id", **SETTINGS)
