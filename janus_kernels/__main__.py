"""`python -m janus_kernels`: what is available on this machine, and for each op which backend
(and CPU ISA level) runs it, and why."""
import platform

import torch

from . import __version__, _ext, backends, cpu_isa

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_FEATURES = ("softcap", "rel_bias")   # attention's score modifiers (backends declare them)


def _name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def main() -> None:
    print(f"janus-kernels {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__} "
          f"(cuda: {torch.version.cuda or 'no'}), threads {torch.get_num_threads()}, "
          f"torch cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"compiled extension: {_ext.build_info()}"
          + ("" if _ext.available() else f"  ({_ext._ERROR})"))
    print(f"CPU kernels: ISA level {cpu_isa.describe()}")
    print(f"  levels this machine can test: {', '.join(cpu_isa.available_levels()) or 'none'} "
          f"(cap with {cpu_isa.ENV_CAP}=avx2|avx512|amx)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        device = torch.device(dev)
        print(f"[{dev}] backend per op and dtype (head_dim 64 for attention):")
        for op in backends.OPS:
            hd = 64 if op == "attention" else None
            picks = []
            for dt in _DTYPES:
                name = backends.default_backend(op, device, dt, hd)
                picks.append(f"{_name(dt)}->{name}")
            print(f"    {op:14s} " + "  ".join(picks))
        for feature in _FEATURES:
            picks = [f"{_name(dt)}->{backends.default_backend('attention', device, dt, 64, (feature,))}"
                     for dt in _DTYPES]
            print(f"    {'+ ' + feature:14s} " + "  ".join(picks))
        for name in backends.names():
            reasons = {backends.why_not(op, name, device, None, None) or "yes"
                       for op in backends.OPS}
            detail = backends.get(name).detail(device) if reasons & {"yes"} else ""
            shown = "yes" if reasons == {"yes"} else "; ".join(sorted(reasons))
            print(f"    backend {name:9s}: {shown}" + (f" [{detail}]" if detail else ""))

if __name__ == "__main__":
    main()
