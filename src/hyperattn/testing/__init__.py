"""Checks that need hardware CI does not have (``python -m hyperattn.testing.gpu``)."""
