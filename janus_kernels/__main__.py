"""`python -m janus_kernels`: what is available on this machine."""
import os
import platform

import torch

from . import _ext, __version__
from .attention import available_backends, default_backend
from .losses import default_loss_backend


def main() -> None:
    print(f"janus-kernels {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__} "
          f"(cuda: {torch.version.cuda or 'no'}), threads {torch.get_num_threads()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"compiled extension: {_ext.build_info()}"
          + ("" if _ext.available() else f"  ({_ext._ERROR})"))
    try:
        import triton
        mode = "interpreted (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" \
            else ("compiled" if torch.cuda.is_available() else "compiled (no GPU here: unused)")
        print(f"triton {triton.__version__}: {mode}")
    except ImportError:
        print("triton: not installed")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        print(f"[{dev}] attention backends: {available_backends(dev)}")
        for dt in (torch.float32, torch.bfloat16):
            print(f"[{dev}] attention({str(dt).replace('torch.', '')}) -> "
                  f"{default_backend(dev, dt)}")
        print(f"[{dev}] symmetric_kl / cross_entropy / janus_loss -> "
              f"{default_loss_backend(dev)}")


if __name__ == "__main__":
    main()
