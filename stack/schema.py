"""Column names and cache conventions shared by every stage.

Cache schema (every model, frozen or fine-tuned): ``cache/<model>/{train,test}.parquet`` with
``text_id``, ``pred_<target>`` for the six targets (OOF on train, fold-mean on test) and
``emb_<i>`` float32 embedding columns (may be absent for models without embeddings, e.g. tfidf).
The Parquet schema metadata key ``stack`` holds a JSON fingerprint (see ``cache.py``).
"""

ID = "text_id"
TEXT = "full_text"
FOLD = "fold"
TARGETS = ("cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions")
PRED_COLS = tuple(f"pred_{t}" for t in TARGETS)
EMB_PREFIX = "emb_"
SCORE_MIN, SCORE_MAX, SCORE_STEP = 1.0, 5.0, 0.5
META_KEY = b"stack"
# Member kinds whose cached embeddings must not be fitted on (by a head or a feature blender): each row's OOF vector
# came from a fold model trained on the other folds' labels, so a model fitted on them sees the labels of the rows
# it is scored on.
LEAKY_EMBEDDINGS = {"finetune": "its OOF embeddings come from fold models trained on the other folds' labels"}


def emb_cols(dim: int) -> list[str]:
    """Embedding column names for a ``dim``-wide embedding, zero-padded so they sort."""
    return [f"{EMB_PREFIX}{i:05d}" for i in range(dim)]
