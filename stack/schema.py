"""Column names and cache conventions shared by every stage; the task's own columns (id, text, targets) come from
stack.task.

Cache schema (every member, frozen or fine-tuned): ``cache/<member>/{train,test}.parquet`` with the task's id
column, ``pred_<target>`` for each of its targets (OOF on train, fold-mean on test) and ``emb_<i>`` float32
embedding columns (absent for members without embeddings, e.g. tfidf). The Parquet schema metadata key ``stack``
holds the member's meta (JSON; see ``cache.py``).
"""

FOLD = "fold"
EMB_PREFIX = "emb_"
META_KEY = b"stack"
# Member kinds whose cached embeddings must not be fitted on (by a head or a feature blender): each row's OOF vector
# came from a fold model trained on the other folds' labels, so a model fitted on them sees the labels of the rows
# it is scored on.
LEAKY_EMBEDDINGS = {"finetune": "its OOF embeddings come from fold models trained on the other folds' labels"}


def emb_cols(dim: int) -> list[str]:
    """Embedding column names for a ``dim``-wide embedding, zero-padded so they sort."""
    return [f"{EMB_PREFIX}{i:05d}" for i in range(dim)]
