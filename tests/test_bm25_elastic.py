"""Elasticsearch backend: configuration checks here; integration tests need a live cluster.

docker compose up -d elasticsearch
ELASTICSEARCH_URL=http://localhost:9200 .venv/bin/python -m pytest tests/test_bm25_elastic.py
"""

from __future__ import annotations

import logging
import os
import random

import pytest

from tasks.bm25_backends import open_backend
from tasks.bm25_elastic import client_from_env, index_body
from tasks.bm25_index import run as build
from tasks.config import Bm25, Elasticsearch
from tests._bm25_helpers import STABLE, lucene_bm25, write_tsv

LIVE = os.environ.get("ELASTICSEARCH_URL")
needs_es = pytest.mark.skipif(not LIVE, reason="ELASTICSEARCH_URL not set: no Elasticsearch to test against")


def test_index_settings_from_params():
    body = index_body(Bm25(k1=0.9, b=0.4, analyzer="standard", elasticsearch=Elasticsearch(shards=3)))
    settings = body["settings"]
    assert settings["similarity"]["bm25_params"] == {"type": "BM25", "k1": 0.9, "b": 0.4}
    assert settings["number_of_shards"] == 3 and settings["number_of_replicas"] == 0
    assert settings["refresh_interval"] == "-1"
    assert body["mappings"]["properties"]["body"] == {
        "type": "text",
        "analyzer": "standard",
        "similarity": "bm25_params",
    }


def test_connection_from_env_and_secrets_not_logged(monkeypatch, caplog):
    monkeypatch.delenv("ELASTICSEARCH_URL", raising=False)
    with pytest.raises(ValueError, match="ELASTICSEARCH_URL"):
        client_from_env(Bm25())
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://es-a:9200, http://es-b:9200")
    monkeypatch.setenv("ELASTICSEARCH_USER", "elastic")
    monkeypatch.delenv("ELASTICSEARCH_API_KEY", raising=False)
    monkeypatch.delenv("ELASTICSEARCH_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="ELASTICSEARCH_PASSWORD"):
        client_from_env(Bm25())
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", "s3cret-pw")
    with caplog.at_level(logging.DEBUG):
        client = client_from_env(Bm25())  # no request is made here
    assert len(client.transport.node_pool.all()) == 2
    assert "s3cret-pw" not in caplog.text
    client.close()


@pytest.fixture
def es_params(request) -> Bm25:
    name = f"hardnegs-test-{os.getpid()}-{request.node.name.lower()}"[:200]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    return Bm25(
        backend="elasticsearch", analyzer="standard", k1=0.9, b=0.4, elasticsearch=Elasticsearch(index=name)
    )


@needs_es
def test_live_scores_ties_and_count(tmp_path, es_params):
    rng = random.Random(5)
    docs = {i * 2 + 1: " ".join(rng.choices(STABLE[:10], k=rng.randint(1, 12))) for i in range(80)}
    docs.update({p: "river bank" for p in (301, 300, 305)})
    stats = build(write_tsv(tmp_path / "c.tsv", list(docs.items())), tmp_path / "idx", es_params)
    assert stats["passages"] == len(docs)
    searcher = open_backend(tmp_path / "idx", es_params)
    try:
        tokens = {pid: text.split() for pid, text in docs.items()}
        for query in ["river bank", "money money loan", 'what is: (fish) AND "boat"?']:
            expected = lucene_bm25(
                query.lower()
                .replace(":", " ")
                .replace("(", " ")
                .replace(")", " ")
                .replace('"', " ")
                .replace("?", " ")
                .split(),
                tokens,
                0.9,
                0.4,
            )
            got = searcher.search([query], 500)[0]
            assert {p for p, _ in got} == set(expected)
            for pid, score in got:
                assert score == pytest.approx(expected[pid], rel=1e-5)
        tie = searcher.search(["river bank"] * 2, 200)
        assert tie[0] == tie[1]
        assert [p for p, _ in tie[0] if p in (300, 301, 305)] == [300, 301, 305]
        assert searcher.search(["", "   "], 10) == [[], []]
    finally:
        searcher.client.indices.delete(index=es_params.elasticsearch.index, ignore_unavailable=True)
        searcher.close()
