"""The pipeline's stages, one module each, side by side; `pipeline` is the stage table."""
