"""Reading and writing a learned RG filter, independent of the training framework.

Two on-disk formats hold a :class:`~rbmrg.rg.rbm.ConvRBM`:

* the *plain filter* file written by :func:`save_filter`, ``{"weight": tensor(f, f), "stride": b}``
  (plus ``"filter_size"`` for the reader's convenience). It is what the project commits, e.g.
  ``results/paper_filter.pt``;
* a PyTorch Lightning checkpoint of ``rbmrg.training.module.RBMModule``, which keeps the ConvRBM as attribute
  ``rbm``: the filter is ``state_dict["rbm.weight"]`` and the stride is a saved hyper-parameter.

Loading never runs code from the file. Both formats are pickles, and a pickle may name any Python
function to call while it is read (``os.system`` included), so every file goes through
:func:`read_checkpoint`, which unpickles with ``torch.load(weights_only=True)``: tensors, plain
containers and numbers, plus the few OmegaConf container classes that hyper-parameters saved from a
Hydra config may hold (:data:`OMEGACONF_GLOBALS`, allowed only for the duration of the call and turned
into plain dicts and lists without resolving interpolations). A file that needs anything else is
refused with a ValueError naming the file and the object it asked for. The filter size is always read
off the weight's shape, never trusted from metadata. Loading needs no Lightning import.

A run with ``model.n_replicas=R > 1`` holds R filters: ``rbm.weight`` of shape (R, f, ..., f) and the
hyper-parameter ``n_replicas`` (a plain file: ``"weight"`` (R, f, ...) and ``"n_replicas"``).
:func:`load_rbms` reads every filter of any file (a list of one for a single filter);
:func:`load_rbm`, which returns one filter, refuses such a file rather than pick one of them.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

from rbmrg.rg.rbm import ConvRBM, ReplicaRBM

#: Key of the filter in the state_dict of the Lightning module (attribute ``rbm`` of RBMModule).
LIGHTNING_WEIGHT_KEY = "rbm.weight"

#: What an OmegaConf DictConfig/ListConfig of plain values pickles into: the containers, their
#: metadata, the untyped and scalar value nodes, and the types the metadata records. None of them
#: runs code when rebuilt (their ``__setstate__`` only stores the state); typed nodes that would
#: import other classes (enums, paths, structured configs) are deliberately left out.
OMEGACONF_GLOBALS: list[Any] = [
    DictConfig,
    ListConfig,
    ContainerMetadata,
    Metadata,
    AnyNode,
    StringNode,
    IntegerNode,
    FloatNode,
    BooleanNode,
    typing.Any,
    collections.defaultdict,
    dict,
    list,
    int,
    float,
    str,
    bool,
]

# A torch.save file is a zip archive (torch >= 1.6) or, in the legacy format, starts with a
# protocol-2 pickle of a magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02"


class MissingCheckpointError(FileNotFoundError, ValueError):
    """The checkpoint path does not exist (a FileNotFoundError and a ValueError)."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The dictionary stored at ``path`` by ``torch.save``, loaded without running any code from it.

    This is the one reader of filter files and Lightning checkpoints in rbmrg; call it to validate a
    file before relying on it (e.g. a resume checkpoint before sampling). Tensors come back on the
    CPU; OmegaConf containers in the file come back as plain dicts and lists, interpolations left as
    their ``"${...}"`` strings (resolving them could read the environment).

    Raises a ValueError that names ``path`` and says why it is refused: a missing path
    (:class:`MissingCheckpointError`, also a FileNotFoundError), a directory, an empty file, a file
    that is not a torch checkpoint or is damaged, a file whose pickle asks for an object outside the
    safe set (the error names it, e.g. ``posix.system``), or one that holds something other than a
    dictionary.
    """
    path = Path(path)
    where = repr(str(path))
    if not path.exists():
        raise MissingCheckpointError(f"checkpoint {where}: no such file")
    if path.is_dir():
        raise ValueError(f"checkpoint {where}: is a directory, expected a checkpoint file")
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except OSError as error:
        raise ValueError(f"checkpoint {where}: cannot be read ({error})") from error
    if not head:
        raise ValueError(f"checkpoint {where}: empty file")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_MAGIC)):
        raise ValueError(
            f"checkpoint {where}: not a torch checkpoint (it does not start like a file written "
            "by torch.save)"
        )
    try:
        with torch.serialization.safe_globals(OMEGACONF_GLOBALS):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "Weights only load failed" not in message:
            raise ValueError(f"checkpoint {where}: damaged torch checkpoint ({message})") from None
        raise ValueError(
            f"checkpoint {where}: holds objects that cannot be loaded safely: "
            f"{_refusal_reason(message)}; rbmrg reads only tensors, plain containers and numbers"
        ) from None
    except Exception as error:  # truncated archive, missing entries, ...
        raise ValueError(
            f"checkpoint {where}: damaged torch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    content = _plain(content)
    if not isinstance(content, dict):
        raise ValueError(
            f"checkpoint {where}: holds a {type(content).__name__}, not a filter or a checkpoint "
            "dictionary"
        )
    return content


def _refusal_reason(message: str) -> str:
    """The object torch's restricted unpickler refused, from its error message."""
    if found := re.search(r"GLOBAL\s+([\w.]+)", message):
        return found.group(1)
    if found := re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message):
        return found.group(1).strip()
    return "an unsupported pickle instruction"


def _plain(tree: Any) -> Any:
    """``tree`` with every OmegaConf container replaced by plain dicts/lists, unresolved."""
    if isinstance(tree, DictConfig | ListConfig):
        return OmegaConf.to_container(tree, resolve=False)
    if isinstance(tree, dict):
        converted = tree.copy()  # keeps OrderedDict (Lightning's state_dict) an OrderedDict
        for name, value in tree.items():
            converted[name] = _plain(value)
        return converted
    if isinstance(tree, list):
        return [_plain(value) for value in tree]
    if type(tree) is tuple:
        return tuple(_plain(value) for value in tree)
    return tree


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


def _weight_and_stride(content: dict, where: str) -> tuple[torch.Tensor, Any]:
    if "state_dict" in content:  # Lightning
        state = content["state_dict"]
        if not isinstance(state, Mapping) or LIGHTNING_WEIGHT_KEY not in state:
            keys = sorted(map(str, state))[:10] if isinstance(state, Mapping) else state
            raise ValueError(
                f"checkpoint {where}: the Lightning state_dict has no {LIGHTNING_WEIGHT_KEY!r} "
                f"(keys: {keys})"
            )
        weight = state[LIGHTNING_WEIGHT_KEY]
        strides = _find_key(content.get("hyper_parameters", {}), "stride")
        if len({repr(s) for s in strides}) != 1:
            raise ValueError(
                f"checkpoint {where}: expected one 'stride' hyper-parameter, found {strides}"
            )
        return weight, strides[0]
    if "weight" not in content:
        raise ValueError(
            f"checkpoint {where}: no filter found (neither a Lightning 'state_dict' nor a "
            f"'weight' entry; keys: {sorted(map(str, content))[:10]})"
        )
    if "stride" not in content:
        raise ValueError(f"checkpoint {where}: has a 'weight' but no 'stride' entry")
    return content["weight"], content["stride"]


def _replica_count(content: dict, where: str) -> int:
    """R, the number of filters the file holds (``n_replicas``; 1 where it is not recorded)."""
    if "state_dict" in content:
        found = _find_key(content.get("hyper_parameters", {}), "n_replicas")
    else:
        found = [content["n_replicas"]] if "n_replicas" in content else []
    if not found:
        return 1
    value = found[0]
    if (
        len({repr(v) for v in found}) != 1
        or isinstance(value, bool)
        or not isinstance(value, int)
        or value < 1
    ):
        raise ValueError(f"checkpoint {where}: n_replicas={found} must be one integer >= 1")
    return value


def load_rbm(path: str | os.PathLike) -> ConvRBM:
    """The ConvRBM stored at ``path`` (plain filter file or Lightning checkpoint), on the CPU.

    Read with :func:`read_checkpoint`. The filter size f and the lattice dimension come from the
    weight's shape, (f, f) or (f, f, f).
    Raises FileNotFoundError or ValueError naming ``path`` if the file is missing, unreadable,
    unsafe, or holds no usable square, finite filter and positive integer stride, or holds R > 1
    filters (``model.n_replicas``; read those with :func:`load_rbms`).
    """
    path = Path(path)
    where = repr(str(path))
    content = read_checkpoint(path)
    replicas = _replica_count(content, where)
    if replicas > 1:
        raise ValueError(
            f"checkpoint {where}: holds {replicas} filters (model.n_replicas={replicas}), not one; "
            "read them all with rbmrg.checkpoint.load_rbms (evaluate.py measures every one)"
        )
    weight, stride = _weight_and_stride(content, where)
    return _filter(weight, stride, where)


def load_rbms(path: str | os.PathLike) -> list[ConvRBM]:
    """Every filter stored at ``path``: R ConvRBMs for a file of ``model.n_replicas=R`` filters,
    ``[load_rbm(path)]`` for a file of one. Each is checked as :func:`load_rbm` checks its one."""
    path = Path(path)
    where = repr(str(path))
    content = read_checkpoint(path)
    replicas = _replica_count(content, where)
    weight, stride = _weight_and_stride(content, where)
    if replicas == 1:
        return [_filter(weight, stride, where)]
    if not isinstance(weight, torch.Tensor) or weight.ndim < 1 or weight.shape[0] != replicas:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(
            f"checkpoint {where}: n_replicas={replicas} but the filters have shape {shape}, "
            f"expected ({replicas}, f, f) or ({replicas}, f, f, f)"
        )
    return [_filter(one, stride, f"{where} (replica {index})") for index, one in enumerate(weight)]


def _filter(weight: Any, stride: Any, where: str) -> ConvRBM:
    """One checked filter as a ConvRBM on the CPU."""
    if (
        not isinstance(weight, torch.Tensor)
        or weight.ndim not in (2, 3)
        or len(set(weight.shape)) != 1
    ):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(
            f"checkpoint {where}: the filter must be a square (f, f) or cubic (f, f, f) tensor, "
            f"got {shape}"
        )
    if not weight.is_floating_point() or not torch.isfinite(weight).all():
        raise ValueError(f"checkpoint {where}: the filter has non-finite or non-real entries")
    if isinstance(stride, torch.Tensor) and stride.numel() == 1:
        stride = stride.item()
    if isinstance(stride, bool) or not isinstance(stride, int | float) or int(stride) != stride:
        raise ValueError(f"checkpoint {where}: stride={stride!r} must be a positive integer")
    if stride < 1:
        raise ValueError(f"checkpoint {where}: stride={stride!r} must be a positive integer")
    rbm = ConvRBM(
        filter_size=int(weight.shape[0]), stride=int(stride), init_scale=0.0, dim=weight.ndim
    )
    with torch.no_grad():
        rbm.weight.copy_(weight.to(torch.float32))
    return rbm.eval()


def save_filter(
    path: str | os.PathLike, rbm: ConvRBM | ReplicaRBM, overwrite: bool = False
) -> Path:
    """Write ``rbm``'s filter in the plain format ``{"weight", "stride", "filter_size"}`` (R filters
    of a :class:`ReplicaRBM`: ``"weight"`` (R, f, ...) and ``"n_replicas"`` as well).

    Parent directories are created. An existing file is kept (FileExistsError naming it) unless
    ``overwrite=True``, so a committed result is not replaced by accident. Returns the path.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    weight = rbm.weight.detach().to("cpu").clone()
    content = {"weight": weight, "stride": int(rbm.stride), "filter_size": int(rbm.filter_size)}
    if isinstance(rbm, ReplicaRBM):
        content["n_replicas"] = rbm.n_replicas
    torch.save(content, path)
    return path
