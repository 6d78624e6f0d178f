"""Publishing to the Hugging Face Hub: model, dataset and Space cards (`cards`), the checks a repository must pass
(`checks`: a fresh process reproduces the logits, no file holds the key), and the upload (`publish`)."""
