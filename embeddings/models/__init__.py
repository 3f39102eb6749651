"""Recommenders behind one shape: ``fit(split)`` then ``score(users, histories)``."""

from embeddings.models.base import Recommender, popularity_scores

__all__ = ["Recommender", "popularity_scores"]
