"""Data files: model architectures (Hugging Face config.json as published) and hardware numbers."""
