"""Integrations with model libraries (``hyperattn.integrations.transformers``)."""
