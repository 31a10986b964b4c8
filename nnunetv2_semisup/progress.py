"""nnU-Net's tqdm habit for long loops over cases: a progress bar with a time estimate on a terminal, nothing when
the output is redirected (tqdm's ``disable=None``) or when the command was asked to be quiet."""
from typing import Iterable, Optional


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", quiet: bool = False):
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="case", disable=True if quiet else None)
