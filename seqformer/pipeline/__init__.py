"""Datasets over token stores, Lightning training, model directories, inference."""
