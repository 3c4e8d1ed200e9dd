"""A janus_model JANUS training step under torch.compile(fullgraph=True) gives the eager
step's losses and parameter gradients (issue 13): the model's attention uses the
(B, L, H, d).transpose(1, 2) layout, whose gradients' strides the op's fakes must promise,
and the batch layout (lengths, descriptors) is built outside the compiled region."""
import pytest
import torch

from janus_kernels import _ext
from janus_model.model import ExecOptions
from janus_model.objectives import compute_loss

from test_prune import _batch, _model

pytestmark = pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def _step(model, src, batch, opts):
    model.zero_grad()
    loss, _ = compute_loss(model, src, batch, "janus", opts=opts)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                           if p.grad is not None}


def test_janus_step_compiles_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    model = _model(torch.float32)
    src, batch = _batch(3)
    opts = ExecOptions()
    eager_loss, eager_grads = _step(model, src, batch, opts)

    def loss_fn(src):
        return compute_loss(model, src, batch, "janus", opts=opts)[0]

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    model.zero_grad()
    loss = compiled(src)
    loss.backward()
    torch.testing.assert_close(loss.detach(), eager_loss, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if n in eager_grads:
            torch.testing.assert_close(p.grad, eager_grads[n], rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{n}: {m}")
