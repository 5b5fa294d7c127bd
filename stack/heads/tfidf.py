"""Word and character n-gram TF-IDF, fitted on the rows a head is fitted on, saved as each vectoriser's vocabulary
(in column order) and IDF: the text side of the ``tfidf`` and ``lgbm`` members' heads.

    tf = TfidfFeatures([{"analyzer": "word", "ngram_range": [1, 2], "min_df": 2, "max_features": 50000,
                         "sublinear_tf": True, "lowercase": True}])
    A = tf.fit_transform(texts)          # CSR (n, vocabulary), float32;  tf.transform(new_texts)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stack.state import pack_strings, savable, unpack_strings

WORD_PATTERN = r"(?u)\b\w+\b|[^\w\s]"  # words, and every punctuation mark as a token of its own


def _vectorizer(params: dict, vocabulary=None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    extra = {"token_pattern": WORD_PATTERN} if params["analyzer"] == "word" else {}
    return TfidfVectorizer(analyzer=params["analyzer"], ngram_range=tuple(params["ngram_range"]),
                           min_df=params["min_df"], max_features=params["max_features"],
                           sublinear_tf=params["sublinear_tf"], lowercase=params["lowercase"], dtype=np.float32,
                           vocabulary=vocabulary, **extra)


@savable
class TfidfFeatures:
    """The vectorisers ``params`` describe (each: analyzer, ngram_range, min_df, max_features, sublinear_tf,
    lowercase), side by side."""

    def __init__(self, params: list[dict]):
        self.params = params

    def fit_transform(self, texts):
        self.fitted_ = [_vectorizer(p) for p in self.params]
        return sp.hstack([v.fit_transform(list(texts)) for v in self.fitted_]).tocsr()

    def transform(self, texts):
        return sp.hstack([v.transform(list(texts)) for v in self.fitted_]).tocsr()

    def to_state(self) -> dict:
        return {"params": self.params, "idf": [v.idf_.astype(np.float64) for v in self.fitted_],
                "vocabulary": [pack_strings(sorted(v.vocabulary_, key=v.vocabulary_.get)) for v in self.fitted_]}

    @classmethod
    def from_state(cls, state: dict):
        obj = cls(state["params"])
        obj.fitted_ = []
        for params, vocab, idf in zip(state["params"], state["vocabulary"], state["idf"]):
            v = _vectorizer(params, {t: i for i, t in enumerate(unpack_strings(vocab))})
            v.idf_ = idf
            obj.fitted_.append(v)
        return obj
