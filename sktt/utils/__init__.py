"""Validation, seeding and small torch helpers shared by every sktt module."""

from ._validation import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_steps,
    check_n_jobs,
    check_positive_finite,
)
from ._seeding import derive_seed, root_seed
from ._memory import format_bytes, parse_memory

__all__ = [
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_steps",
    "check_n_jobs",
    "check_positive_finite",
    "derive_seed",
    "format_bytes",
    "parse_memory",
    "root_seed",
]
