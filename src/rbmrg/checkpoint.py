"""Reading and writing a learned RG filter, independent of the training framework.

Two on-disk formats hold a :class:`~rbmrg.rg.rbm.ConvRBM`:

* the *plain filter* file written by :func:`save_filter`, ``{"weight": tensor(f, f), "stride": b}``
  (plus ``"filter_size"`` for the reader's convenience). It is what the project commits, e.g.
  ``results/paper_filter.pt``, and it loads with ``torch.load(..., weights_only=True)``;
* a PyTorch Lightning checkpoint of ``rbmrg.training.module.RBMModule``, which keeps the ConvRBM as attribute
  ``rbm``: the filter is ``state_dict["rbm.weight"]`` and the stride is a saved hyper-parameter.

The filter size is always read off the weight's shape, never trusted from metadata. Loading needs no
Lightning import; only a checkpoint whose extra entries cannot be read with ``weights_only=True`` is
unpickled in full, which runs code from the file: load only checkpoints you trust (your own).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rbmrg.rg.rbm import ConvRBM

#: Key of the filter in the state_dict of the Lightning module (attribute ``rbm`` of RBMModule).
LIGHTNING_WEIGHT_KEY = "rbm.weight"


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning checkpoints may carry hyper-parameters as OmegaConf objects and loop states
        # that the restricted unpickler refuses; the filter itself is a plain tensor.
        pass
    except Exception as error:  # a truncated or non-torch file
        raise ValueError(f"checkpoint {str(path)!r}: unreadable ({error})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"checkpoint {str(path)!r}: unreadable ({error})") from error


def _find_key(tree: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in nested mappings (hyper-parameters may nest)."""
    found = []
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            if name == key:
                found.append(value)
            else:
                found.extend(_find_key(value, key))
    return found


def _weight_and_stride(content: Any, where: str) -> tuple[torch.Tensor, Any]:
    if not isinstance(content, Mapping):
        raise ValueError(f"checkpoint {where}: holds a {type(content).__name__}, not a filter")
    if "state_dict" in content:  # Lightning
        state = content["state_dict"]
        if LIGHTNING_WEIGHT_KEY not in state:
            raise ValueError(
                f"checkpoint {where}: the Lightning state_dict has no {LIGHTNING_WEIGHT_KEY!r} "
                f"(keys: {sorted(state)[:10]})"
            )
        weight = state[LIGHTNING_WEIGHT_KEY]
        strides = {int(s) for s in _find_key(content.get("hyper_parameters", {}), "stride")}
        if len(strides) != 1:
            raise ValueError(
                f"checkpoint {where}: expected one 'stride' hyper-parameter, found {sorted(strides)}"
            )
        return weight, strides.pop()
    if "weight" not in content:
        raise ValueError(
            f"checkpoint {where}: no filter found (neither a Lightning 'state_dict' nor a "
            f"'weight' entry; keys: {sorted(map(str, content))[:10]})"
        )
    if "stride" not in content:
        raise ValueError(f"checkpoint {where}: has a 'weight' but no 'stride' entry")
    return content["weight"], content["stride"]


def load_rbm(path: str | os.PathLike) -> ConvRBM:
    """The ConvRBM stored at ``path`` (plain filter file or Lightning checkpoint), on the CPU.

    The filter size f comes from the weight's (f, f) shape. Raises FileNotFoundError or ValueError
    naming ``path`` if the file is missing, unreadable, or holds no usable square, finite filter and
    positive integer stride.
    """
    path = Path(path)
    where = repr(str(path))
    weight, stride = _weight_and_stride(_read(path), where)
    if (
        not isinstance(weight, torch.Tensor)
        or weight.ndim != 2
        or weight.shape[0] != weight.shape[1]
    ):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(
            f"checkpoint {where}: the filter must be a square (f, f) tensor, got {shape}"
        )
    if not torch.isfinite(weight).all():
        raise ValueError(f"checkpoint {where}: the filter has non-finite entries")
    if isinstance(stride, torch.Tensor):
        stride = stride.item()
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise ValueError(f"checkpoint {where}: stride={stride!r} must be a positive integer")
    rbm = ConvRBM(filter_size=int(weight.shape[0]), stride=int(stride), init_scale=0.0)
    with torch.no_grad():
        rbm.weight.copy_(weight.to(torch.float32))
    return rbm.eval()


def save_filter(path: str | os.PathLike, rbm: ConvRBM, overwrite: bool = False) -> Path:
    """Write ``rbm``'s filter in the plain format ``{"weight", "stride", "filter_size"}``.

    Parent directories are created. An existing file is kept (FileExistsError naming it) unless
    ``overwrite=True``, so a committed result is not replaced by accident. Returns the path.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    weight = rbm.weight.detach().to("cpu").clone()
    torch.save({"weight": weight, "stride": int(rbm.stride), "filter_size": weight.shape[0]}, path)
    return path
