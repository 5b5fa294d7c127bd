"""Backbones: where weights come from (loading), how token states become essay vectors (pooling)."""
