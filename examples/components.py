"""A plain function served as a component: keyword inputs in, a JSON object out.

It is sync, so the gateway runs it in a worker thread. Call it with
`{"kwargs": {"text": "the cat sat on the mat", "top": 2}}`.
"""

from collections import Counter


def word_stats(text: str, top: int = 3) -> dict:
    """Word count, distinct words and the most frequent ones (ties in first-seen order)."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    words = [w for w in words if w]
    common = Counter(words).most_common(max(0, int(top)))
    return {
        "words": len(words),
        "distinct": len(set(words)),
        "top": [{"word": w, "count": c} for w, c in common],
    }
