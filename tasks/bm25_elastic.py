"""Elasticsearch backend for BM25 (official ``elasticsearch`` client).

Connection and credentials come only from the environment, never from params or logs:

- ``ELASTICSEARCH_URL``: one URL or a comma-separated list (multi-node clusters),
- ``ELASTICSEARCH_API_KEY``, or ``ELASTICSEARCH_USER`` + ``ELASTICSEARCH_PASSWORD``,
- ``ELASTICSEARCH_CA_CERTS``: path of the CA bundle for https.

Loading: the index is (re)created with the BM25 similarity (k1, b) and analyzer from params,
``number_of_replicas: 0`` and ``refresh_interval: -1`` during the bulk load, then restored; the
passage id is the document ``_id`` so a resend overwrites. Bulk items are checked one by one
(429s retried with exponential backoff by the client helper) and the final ``_count`` must equal
the number of passages. Searching uses ``msearch`` in batches; an item-level ``error`` or a failed
shard raises instead of silently returning fewer hits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tasks.bm25_backends import Ranked, sort_ranked
from tasks.config import Bm25
from tasks.records import Passage

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 2.0
MAX_BACKOFF_S = 120.0
SIMILARITY = "bm25_params"


class ElasticError(RuntimeError):
    """Elasticsearch refused documents or returned an incomplete answer."""


def client_from_env(params: Bm25) -> Any:
    """An ``Elasticsearch`` client configured from the environment (see module doc)."""
    from elasticsearch import Elasticsearch

    url = os.environ.get("ELASTICSEARCH_URL", "").strip()
    if not url:
        raise ValueError(
            "ELASTICSEARCH_URL is not set (e.g. http://localhost:9200); bm25.backend=elasticsearch"
        )
    hosts = [h.strip() for h in url.split(",") if h.strip()]
    kwargs: dict[str, Any] = {
        "request_timeout": params.elasticsearch.request_timeout_s,
        "max_retries": params.elasticsearch.max_retries,
        "retry_on_timeout": True,
    }
    api_key = os.environ.get("ELASTICSEARCH_API_KEY")
    user, password = os.environ.get("ELASTICSEARCH_USER"), os.environ.get("ELASTICSEARCH_PASSWORD")
    if api_key:
        kwargs["api_key"] = api_key
    elif user or password:
        if not (user and password):
            raise ValueError(
                "set both ELASTICSEARCH_USER and ELASTICSEARCH_PASSWORD (or ELASTICSEARCH_API_KEY)"
            )
        kwargs["basic_auth"] = (user, password)
    if os.environ.get("ELASTICSEARCH_CA_CERTS"):
        kwargs["ca_certs"] = os.environ["ELASTICSEARCH_CA_CERTS"]
    log.info(
        "elasticsearch: %d host(s), auth=%s",
        len(hosts),
        "api_key" if api_key else "basic" if user else "none",
    )
    return Elasticsearch(hosts, **kwargs)


def index_body(params: Bm25) -> dict:
    es = params.elasticsearch
    return {
        "settings": {
            "number_of_shards": es.shards,
            "number_of_replicas": 0,
            "refresh_interval": "-1",
            "similarity": {SIMILARITY: {"type": "BM25", "k1": params.k1, "b": params.b}},
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "pid": {"type": "long"},
                "body": {"type": "text", "analyzer": params.analyzer, "similarity": SIMILARITY},
            },
        },
    }


def build_elastic(passages: Iterable[Passage], params: Bm25, progress: Any = None) -> dict:
    """(Re)create the index and bulk-load ``passages``; returns stats for the manifest."""
    from elasticsearch.helpers import streaming_bulk

    es = params.elasticsearch
    client = client_from_env(params)
    client.indices.delete(index=es.index, ignore_unavailable=True)
    body = index_body(params)
    client.indices.create(index=es.index, settings=body["settings"], mappings=body["mappings"])
    pids: list[int] = []

    def actions() -> Iterator[dict]:
        for p in passages:
            pids.append(p.pid)
            yield {"_index": es.index, "_id": str(p.pid), "_source": {"pid": p.pid, "body": p.text}}

    failures: list[Any] = []
    for ok, item in streaming_bulk(
        client,
        actions(),
        chunk_size=es.bulk_docs,
        max_retries=es.max_retries,
        initial_backoff=INITIAL_BACKOFF_S,
        max_backoff=MAX_BACKOFF_S,
        raise_on_error=False,
        raise_on_exception=True,
    ):
        if not ok:
            failures.append(item)
        elif progress is not None:
            progress.update(1)
    if failures:
        raise ElasticError(f"index {es.index}: {len(failures)} document(s) refused; first: {failures[:3]}")
    client.indices.put_settings(
        index=es.index, settings={"number_of_replicas": es.replicas, "refresh_interval": None}
    )
    client.indices.refresh(index=es.index)
    count = int(client.count(index=es.index)["count"])
    if count != len(pids):
        raise ElasticError(f"index {es.index}: _count is {count}, expected {len(pids)} passages")
    return {"pids": pids, "index": es.index, "settings": body, "count": count}


class ElasticSearcher:
    """``match`` queries (no query syntax is parsed) through ``msearch`` batches."""

    def __init__(self, params: Bm25, manifest: dict) -> None:
        self.params = params
        self.index = manifest.get("index", params.elasticsearch.index)
        self.client = client_from_env(params)
        # several shards: gather global term statistics first, so scores match one shard's
        self.search_type = "dfs_query_then_fetch" if params.elasticsearch.shards > 1 else "query_then_fetch"
        self._analyze_cache: dict[str, bool] = {}

    def close(self) -> None:
        self.client.close()

    def search(self, texts: Sequence[str], k: int) -> list[Ranked]:
        out: list[Ranked] = []
        step = self.params.elasticsearch.msearch_batch
        for start in range(0, len(texts), step):
            out.extend(self._batch(texts[start : start + step], k))
        return out

    def _batch(self, texts: Sequence[str], k: int) -> list[Ranked]:
        searches: list[dict] = []
        for text in texts:
            searches.append({"index": self.index, "search_type": self.search_type})
            searches.append(
                {
                    "size": k,
                    "track_total_hits": False,
                    "_source": False,
                    "query": {"match": {"body": {"query": text}}},
                    "sort": [{"_score": "desc"}, {"pid": "asc"}],
                    "docvalue_fields": ["pid"],
                }
            )
        resp = self.client.msearch(searches=searches)
        results: list[Ranked] = []
        for text, item in zip(texts, resp["responses"], strict=True):
            if "error" in item:
                raise ElasticError(f"msearch item failed for query {text[:60]!r}: {item['error']}")
            failed = item.get("_shards", {}).get("failed", 0)
            if failed:
                raise ElasticError(
                    f"msearch: {failed} shard(s) failed for query {text[:60]!r}: {item['_shards']}"
                )
            if item.get("timed_out"):
                raise ElasticError(f"msearch: query {text[:60]!r} timed out (partial hits)")
            results.append(
                sort_ranked(((int(h["sort"][1]), float(h["sort"][0])) for h in item["hits"]["hits"]), k)
            )
        return results
