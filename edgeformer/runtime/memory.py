"""Physical memory checks: a KV budget or a context that cannot fit in this machine's
memory is refused up front with the bytes it needs, rather than accepted (numpy's zeroed
pages are committed lazily, so 40 GiB was "allocated" on a 23 GiB host) or ended by a raw
MemoryError or the OOM killer later."""
from __future__ import annotations

from edgeformer.errors import CapacityError


def available_bytes() -> int | None:
    """Memory the OS can give this process now without swapping (Linux MemAvailable,
    else psutil's `available`); None when neither can tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def kv_bytes(config: object, n_tokens: int, itemsize: int = 4) -> int:
    """Bytes of keys and values for `n_tokens` positions of every layer of a decoder
    `config` (n_layers, n_kv_heads, head_dim; 0 for a config without them)."""
    c = config
    return itemsize * n_tokens * getattr(c, "n_layers", 0) * getattr(c, "n_kv_heads", 0) * 2 * getattr(c, "head_dim", 0)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(need: int, what: str, available: int | None = None) -> None:
    """CapacityError naming `what`, the bytes it needs and those available when `need`
    is more than the machine's available memory (`available`: measured when None)."""
    have = available_bytes() if available is None else available
    if have is not None and need > have:
        raise CapacityError(f"{what} needs {need} bytes ({gib(need)}) but this machine has {have} bytes "
                            f"({gib(have)}) of memory available")
