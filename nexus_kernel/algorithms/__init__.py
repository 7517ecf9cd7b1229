"""Generic algorithms of the pipeline: streaming PCA, layer profiling, the recovering training loop, retention, quantization."""
