"""Cheap stage-one members without a transformer: word + char TF-IDF (tfidf.py), handcrafted statistics (stats.py)."""
