"""Parsing and reporting memory budgets."""

import numbers
import re

__all__ = ["parse_memory", "format_bytes", "DEFAULT_MAX_MEMORY"]

DEFAULT_MAX_MEMORY = 2 * 1024**3
_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}


def parse_memory(name, value):
    """Bytes from an int, or a string such as ``"512MB"`` / ``"4 GiB"``; ``None`` = 2 GiB."""
    if value is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).upper() in _UNITS:
            nbytes = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
            if nbytes >= 1:  # "0.5B" rounds down to no budget at all: refused like 0
                return nbytes
    raise ValueError(f"{name}={value!r} is invalid; accepted: None, a positive int of bytes, "
                     "or a string like '512MB' or '4GiB'.")


def format_bytes(n):
    """Human-readable bytes, e.g. ``'1.5 GiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
