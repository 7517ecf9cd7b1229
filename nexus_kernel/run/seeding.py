"""Seeding: every stage that draws random numbers starts from `seed_everything`."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and pin torch to one thread: on small models one thread is
    the steadiest and keeps results bitwise repeatable."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
