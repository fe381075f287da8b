"""Evaluation on pretrained models and real long texts: perplexity and needle tests."""
