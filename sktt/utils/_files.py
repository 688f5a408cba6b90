"""Load a user's model file and data file, safely.

Models come in three shapes:

- a ``state_dict`` saved with ``torch.save(model.state_dict(), path)``: read with
  ``torch.load(path, weights_only=True)`` (no pickled code runs) into an
  instance of a class the user names (``module:Class`` or ``file.py:Class``);
- TorchScript (``torch.jit.save``): its forward graph is lowered so that the
  parameters become explicit inputs, and wrapped in an ordinary
  :class:`torch.nn.Module` whose parameters ``torch.func`` can differentiate;
- ``torch.export`` programs (``.pt2``, ``torch.export.save``): the program's
  module, used in the mode it was exported in (export it in ``eval()`` mode and
  with a dynamic batch dimension).

Data is a ``.npz`` archive read with ``numpy.load(allow_pickle=False)``.

Nothing here unpickles arbitrary objects: ``torch.export.load`` would (it falls
back to ``weights_only=False``), so it runs under :func:`_weights_only_unpickling`.
"""

import contextlib
import importlib
import importlib.util
import json
import os
import pickle
import sys
import warnings
import zipfile

import numpy as np
import torch
from torch import nn

__all__ = ["InputFileError", "load_data_file", "load_model_file"]


class InputFileError(ValueError):
    """A model or data file cannot be read or does not hold what is needed."""


class _SharedFunction:
    """A TorchScript function shared (not copied) by deep copies of its wrapper."""

    def __init__(self, fn):
        self.fn = fn

    def __deepcopy__(self, memo):
        return self  # the compiled graph is stateless; parameters live in the wrapper

    def __call__(self, *args):
        return self.fn(*args)


class TorchScriptWrapper(nn.Module):
    """A TorchScript module as a plain ``nn.Module`` with ordinary parameters.

    The scripted forward graph is lowered (``torch._C._jit_pass_lower_graph``) so
    every parameter and buffer is an explicit input; the wrapper registers copies
    of them under their original names and passes them in on each call, so
    ``torch.func.functional_call``, ``copy.deepcopy`` and optimisers work.
    """

    def __init__(self, script_module):
        super().__init__()
        try:
            graph, slots = torch._C._jit_pass_lower_graph(script_module.forward.graph,
                                                           script_module._c)
        except RuntimeError as exc:
            raise InputFileError(
                "this TorchScript model cannot be turned into a differentiable module "
                f"({str(exc).splitlines()[0]}); models with non-tensor state such as dropout "
                "or BatchNorm training flags are not supported. Save a state_dict and pass "
                "--model-class, or save a torch.export program (.pt2).") from None
        self._fn = _SharedFunction(torch._C._create_function_from_graph("forward", graph))
        owners = {}
        for name, t in script_module.named_buffers():
            owners[(t.data_ptr(), tuple(t.shape))] = name
        for name, t in script_module.named_parameters():
            owners[(t.data_ptr(), tuple(t.shape))] = name
            self._register(name, nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad))
        for name, t in script_module.named_buffers():
            self._register(name, t.detach().clone(), buffer=True)
        try:
            self._slots = [owners[(t.data_ptr(), tuple(t.shape))] for t in slots]
        except KeyError:
            raise InputFileError("a TorchScript graph input is neither a parameter nor a buffer "
                                 "of the module; this model cannot be wrapped.") from None
        self.train(script_module.training)

    def _register(self, name, value, buffer=False):
        *path, leaf = name.split(".")
        module = self
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        if buffer:
            module.register_buffer(leaf, value)
        else:
            module.register_parameter(leaf, value)

    def forward(self, *inputs):
        """Run the scripted graph with this module's parameters and buffers."""
        state = dict(self.named_parameters(remove_duplicate=False))
        state.update(self.named_buffers(remove_duplicate=False))
        return self._fn(*inputs, *[state[name] for name in self._slots])


class _RefusingPickle:
    """Stands in for the ``pickle`` module: refuses ``loads``, delegates the rest."""

    @staticmethod
    def loads(*args, **kwargs):
        raise pickle.UnpicklingError("sktt refuses to unpickle arbitrary Python objects from a "
                                     "model file (they could run code)")

    load = loads

    def __getattr__(self, name):
        return getattr(pickle, name)


@contextlib.contextmanager
def _weights_only_unpickling():
    """While ``torch.export.load`` runs, unpickle with torch's weights-only unpickler only.

    ``torch.export.load`` retries a failed weights-only ``torch.load`` with
    ``weights_only=False`` and reads some payloads with plain ``pickle``: a
    hostile ``.pt2`` file would run code (tests/test_bad_inputs.py builds one).
    Here every ``torch.load`` is forced to ``weights_only=True`` and plain
    unpickling in the archive reader is refused. (``torch.load`` is patched for
    the duration of the call: do not load models from several threads at once.)
    """
    real_load = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    try:
        from torch.export.pt2_archive import _package
    except ImportError:  # older torch: no plain-pickle payloads in its reader
        _package = None
    saved = getattr(_package, "pickle", None)
    torch.load = load
    if saved is not None:
        _package.pickle = _RefusingPickle()
    try:
        yield
    finally:
        torch.load = real_load
        if saved is not None:
            _package.pickle = saved


def _torch_reason(exc):
    """The line of torch's (long) loading error that says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed",
                                                       "Please file an issue",
                                                       "Check the documentation"))]
    return (useful[0] if useful else lines[0] if lines else type(exc).__name__)[:200]


def _is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _import_class(spec):
    """The class named by ``module:Class`` or ``path/to/file.py:Class``."""
    if ":" not in spec:
        raise InputFileError(f"--model-class {spec!r} is invalid; accepted: 'package.module:Class' "
                             "or 'path/to/file.py:Class'.")
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise InputFileError(f"--model-class: file {module_name!r} does not exist.")
            mod_spec = importlib.util.spec_from_file_location("_sktt_user_model", module_name)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules.setdefault("_sktt_user_model", module)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputFileError(f"--model-class: cannot import {module_name!r} ({exc}).") from None
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise InputFileError(f"--model-class: {module_name!r} has no attribute {attr!r}.") from None
    return cls


def _state_dict_of(obj, path):
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(f"{path!r} does not hold a state_dict (a dict of tensors).")
    return obj


def load_model_file(path, *, model_class=None, model_kwargs=None, device="cpu"):
    """Load a model file as an ``nn.Module`` in eval mode.

    Parameters
    ----------
    path : str
        ``.pt2`` (torch.export), TorchScript archive, or a state_dict file.
    model_class : str, optional
        ``module:Class`` or ``file.py:Class``; required for a state_dict.
    model_kwargs : dict or str, optional
        Keyword arguments of the class (a dict or a JSON object string).
    device : str, default="cpu"

    Returns
    -------
    model : torch.nn.Module
    """
    if not os.path.isfile(path):
        raise InputFileError(f"model file {path!r} does not exist.")
    if isinstance(model_kwargs, str):
        try:
            model_kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"--model-kwargs is not valid JSON ({exc}).") from None
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise InputFileError("--model-kwargs must be a JSON object, e.g. '{\"n_classes\": 5}'.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if path.endswith(".pt2"):
            try:
                with _weights_only_unpickling():
                    module = torch.export.load(path).module()
            except Exception as exc:  # noqa: BLE001 - reported as a bad input file
                raise InputFileError(
                    f"cannot read torch.export program {path!r} ({_torch_reason(exc)}); only "
                    "tensors and plain containers are unpickled from a model file "
                    "(weights_only=True).") from None
            # Exported modules refuse train()/eval(); the graph keeps the mode of export.
            for name in ("train", "eval"):
                module.__dict__.pop(name, None)
            return module.to(device).eval()
        if _is_torchscript(path):
            try:
                script = torch.jit.load(path, map_location=device)
            except Exception as exc:  # noqa: BLE001
                raise InputFileError(f"cannot read TorchScript model {path!r} ({exc}).") from None
            return TorchScriptWrapper(script).to(device).eval()
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001
            reason = _torch_reason(exc)
            raise InputFileError(
                f"cannot read model file {path!r}: it is not a TorchScript archive, a "
                "torch.export program (.pt2) or a state_dict readable with "
                f"torch.load(weights_only=True) ({reason}).") from None
    if isinstance(state, nn.Module):  # pragma: no cover - weights_only forbids modules
        return state.to(device).eval()
    state = _state_dict_of(state, path)
    if model_class is None:
        raise InputFileError(f"{path!r} is a state_dict: the architecture is needed; pass "
                             "--model-class module:Class (and --model-kwargs '{...}' if the "
                             "class takes arguments), or save the model with torch.jit.save / "
                             "torch.export.save.")
    cls = _import_class(model_class) if isinstance(model_class, str) else model_class
    try:
        model = cls(**(model_kwargs or {}))
    except Exception as exc:  # noqa: BLE001
        raise InputFileError(
            f"cannot build {model_class}(**{model_kwargs or {}}) ({exc}).") from None
    if not isinstance(model, nn.Module):
        raise InputFileError(f"{model_class} is not a torch.nn.Module class.")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputFileError(f"the state_dict in {path!r} does not fit {model_class}: "
                             f"{str(exc).splitlines()[0]} ...") from None
    return model.to(device).eval()


def load_data_file(path, *, x_key="X", y_key="y"):
    """``(X, y)`` numpy arrays from a ``.npz`` file (no pickles).

    Parameters
    ----------
    path : str
    x_key, y_key : str, default="X", "y"
        Names of the arrays in the archive. Several comma-separated names in
        ``x_key`` (``"input_ids,attention_mask"``) make X a dict of arrays: the
        model's keyword inputs, as a tokenizer returns them.

    Returns
    -------
    X : ndarray or dict of str to ndarray
    y : ndarray
    """
    if not os.path.isfile(path):
        raise InputFileError(f"data file {path!r} does not exist.")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(b"PK"):
        kind = "a single .npy array" if magic == b"\x93NUMPY" else "not a .npz (zip) archive"
        raise InputFileError(f"data file {path!r} is {kind}; accepted: a .npz archive with arrays "
                             f"{x_key!r} and {y_key!r} (numpy.savez).")
    try:
        with np.load(path, allow_pickle=False) as data:
            x_keys = [k.strip() for k in x_key.split(",")]
            missing = [k for k in (*x_keys, y_key) if k not in data.files]
            if missing:
                raise InputFileError(f"data file {path!r} has arrays {data.files}, not "
                                     f"{missing}; use --x-key/--y-key to name them.")
            X = data[x_keys[0]] if len(x_keys) == 1 else {k: data[k] for k in x_keys}
            y = data[y_key]
    except InputFileError:
        raise
    except ValueError as exc:
        raise InputFileError(f"cannot read {path!r} without pickles ({exc}); save plain numeric "
                             "arrays with numpy.savez.") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputFileError(f"cannot read data file {path!r} as .npz ({exc}).") from None
    inputs = X if isinstance(X, dict) else {x_key: X}
    if y.dtype == object or any(a.dtype == object for a in inputs.values()):
        raise InputFileError(f"data file {path!r} holds object arrays; accepted: numeric arrays.")
    for key, a in inputs.items():
        if len(a) != len(y):
            raise InputFileError(f"data file {path!r}: {key} has {len(a)} samples but {y_key} "
                                 f"has {len(y)}.")
    return X, y
