"""The 2x / 3x tolerance rule (attention_utils.assert_within_rule), shared by the CPU,
Triton and CUDA-emulation suites, rejects what it must."""
import pytest
import torch

from attention_utils import assert_within_rule


def test_rule_accepts_within_and_rejects_beyond_the_allowance():
    exact = torch.tensor([1.0, 2.0, float("-inf")], dtype=torch.float64)
    same = exact + torch.tensor([1e-3, 0.0, 0.0], dtype=torch.float64)
    assert_within_rule("out", exact + 1.9e-3, exact, same, grad=False, floor=0.0)
    with pytest.raises(AssertionError, match="2.0x"):
        assert_within_rule("out", exact + 2.1e-3, exact, same, grad=False, floor=0.0)
    assert_within_rule("dq", exact + 2.9e-3, exact, same, grad=True, floor=0.0)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_within_rule("lse", torch.tensor([1.0, 2.0, 3.0]), exact, same, grad=False,
                           floor=1.0)
    with pytest.raises(AssertionError, match="NaN"):
        assert_within_rule("out", torch.tensor([float("nan"), 2.0, float("-inf")]), exact, same,
                           grad=False, floor=1.0)
