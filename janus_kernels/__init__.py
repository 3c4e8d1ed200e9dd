"""janus-kernels: structured-mask flash attention and fused JANUS losses for PyTorch.

    import janus_kernels as jk
    mask = jk.masks.janus_nar_mask(U, M)          # a few ints per sample, no dense mask
    out = jk.attention(q, k, v, mask)             # mask generated inside the kernel
    total, terms = jk.janus_loss(ar, nar, aux, y_ar, y_masked, kl_rows)  # fused losses
    x = jk.dropout_add(f(x), x, p=0.1)            # residual dropout, Philox mask in-kernel
"""
import torch  # noqa: F401  (must precede the extension import)

from . import _ext, cpu_isa, losses, masks, score_mods  # noqa: F401
from .attention import attention  # noqa: F401
from .backends import BackendError, available_backends, default_backend  # noqa: F401
from .backends import cpu as _cpu_backend  # noqa: F401,E402  (registers the raw janus:: CPU ops)
from .cpu_isa import cap_cpu_isa  # noqa: F401
from .dropout_add import dropout_add  # noqa: F401
from .masks import (MaskDescriptor, causal_mask, document_mask, full_mask,  # noqa: F401
                    hf_mask, janus_ar_mask, janus_nar_mask, key_padding_mask,
                    permutation_mask, prefix_lm_mask, sliding_window_mask, varlen_mask)
from .losses import (JanusLossWeights, cross_entropy, empty_cache,  # noqa: F401
                     fused_linear_cross_entropy, fused_linear_janus_loss, janus_loss,
                     symmetric_kl)

__version__ = "0.1.0"
