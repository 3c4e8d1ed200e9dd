"""Integrations of janus-kernels with other libraries, each an optional dependency.

Importing ``janus_kernels`` never imports these; import the one you need::

    from janus_kernels.integrations import transformers as jk_hf
    jk_hf.register()          # attn_implementation="janus" in Hugging Face transformers
"""
