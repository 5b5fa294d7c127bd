"""Stage two: fit a blender on the concatenated cached features of several models, same folds as stage one.

Never imports torch. ``stack blend --models minilm,mpnet --method ridge --features emb``.
"""
