"""janus_model.memory.keep_freed_memory: the glibc policy the trainer applies on CPU."""
import subprocess
import sys

import pytest

CHECK = ("import janus_model.memory as m; a = m.keep_freed_memory(); "
         "print(a, m.keep_freed_memory())")


def _run(env_extra):
    import os
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         env=env, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc policy")
def test_applied_once_on_linux_and_opt_out():
    assert _run({}) == ["True", "True"]               # applied, then reported as in effect
    assert _run({"JANUS_KEEP_FREED_MEMORY": "0"}) == ["False", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc policy")
def test_steady_state_steps_reuse_freed_memory():
    """A step-like pattern (MB-sized activations, then their gradients, all freed): with the
    policy, later steps reuse the memory (few first-touch page faults); glibc's default
    maps and unmaps it every step."""
    code = ("import resource, sys, torch, janus_model.memory as m\n"
            "sys.argv[1] == '1' and m.keep_freed_memory()\n"
            "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "def step():\n"
            "    acts = [torch.ones(n << 18) for n in (4, 8, 3, 16, 5, 4, 8, 3, 16, 5, 40)]\n"
            "    grads = [torch.ones_like(a) for a in reversed(acts)]\n"
            "    del acts, grads\n"
            "step(); step()\n"
            "f0 = faults()\n"
            "step(); step(); step()\n"
            "print(faults() - f0)\n")
    n = {flag: int(subprocess.run([sys.executable, "-c", code, flag], capture_output=True,
                                  text=True, check=True).stdout) for flag in ("0", "1")}
    assert n["1"] * 4 < n["0"], n
