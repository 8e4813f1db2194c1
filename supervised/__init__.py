"""Supervised few-shot task families: sine regression, binary classification, Omniglot."""
