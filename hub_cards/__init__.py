"""Model, dataset and Space card templates (Jinja, as huggingface_hub fills them).

Installed as the package hf_lcrypt.hub.templates (see pyproject.toml)."""
