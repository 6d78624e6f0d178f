"""Model, dataset and Space card templates (Jinja, as huggingface_hub fills them); installed as hf_lcrypt.hub.templates."""
