"""Real llama-index query engine and retriever subclasses (offline, deterministic).

Kept apart from fixtures_human because importing llama-index-core costs over a second.
"""

from __future__ import annotations

from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

DOCS = {
    "refunds": "Refunds are issued within 14 days.",
    "shipping": "Shipping takes 3 to 5 business days.",
}


class KeywordRetriever(BaseRetriever):
    """Returns the documents whose key appears in the query."""

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str.lower()
        return [
            NodeWithScore(node=TextNode(text=text, id_=key), score=1.0)
            for key, text in DOCS.items()
            if key in query
        ]


class KeywordQueryEngine(CustomQueryEngine):
    """Answers with the matching documents' text."""

    def custom_query(self, query_str: str) -> str:
        nodes = KeywordRetriever().retrieve(query_str)
        return " ".join(n.node.get_content() for n in nodes) or "I don't know."


retriever = KeywordRetriever()
query_engine = KeywordQueryEngine()
