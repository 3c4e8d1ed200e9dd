"""A compact JANUS encoder-decoder, trainer and decoders on top of janus_kernels."""
