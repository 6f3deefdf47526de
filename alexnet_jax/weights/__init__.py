"""Weights from and to other frameworks: layouts, readers, writers, imported runs."""
