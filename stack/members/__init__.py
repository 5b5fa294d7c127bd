"""Stage-one members: one module per kind, each registered where it is defined (stack.members.registry).

``frozen`` (a transformer's pooled hidden states + ridge), ``finetune`` (a transformer fine-tuned per fold),
``tfidf`` (word + char n-grams + ridge), ``features`` (text statistics + ridge), ``grammar`` (error rates of an
ONNX grammar tagger + ridge), ``lgbm`` (LightGBM on text statistics + an SVD of TF-IDF), ``head`` (kernel ridge,
SVR, ridge or a small MLP over another member's cached embeddings). Every kind turns essays into OOF/test predictions (+ embeddings) on the fixed folds
(``stack fit NAME``), saves what scoring new essays needs in ``models/<name>/`` and reloads it (``load_scorer``).
Importing this package registers every kind; torch is imported only when a transformer kind runs.

    from stack.members import fit_member, load_scorer, KINDS
"""

from stack.members import features, finetune, frozen, grammar, head, lgbm, tfidf  # noqa: F401 (each registers its kind)
from stack.members.registry import KINDS, get_kind, load_member  # noqa: F401
from stack.members.run import fit_member, load_scorer  # noqa: F401
