"""The model process: inference backends, hardware plan, tokenizers, proof calibration."""
