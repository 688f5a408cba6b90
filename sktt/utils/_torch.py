"""Small torch helpers: leave the user's model and RNG exactly as they were, and say what
was assumed about it."""

import contextlib
import random
import warnings

import numpy as np
import torch

__all__ = ["model_assumptions", "model_untouched", "require_trainable", "trainable_parameters",
           "model_device_dtype", "warn_model_assumptions"]

# layers whose train-mode forward differs from eval mode (the function sktt linearises)
_MODE_DEPENDENT = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._NormBase)


def trainable_parameters(model):
    """``(names, tensors)`` of the parameters with ``requires_grad=True``, in module order.

    Weight-tied parameters appear once (``named_parameters`` de-duplicates them).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def require_trainable(model):
    """:func:`trainable_parameters`, raising if there is none (nothing would be trained) or
    if the model is TorchScript (whose parameters nothing here can differentiate or step)."""
    scripted = [(n or "model", type(m).__name__) for n, m in model.named_modules()
                if isinstance(m, torch.jit.ScriptModule)]
    if scripted:
        # torch.func raised "The stateless API can't be used with Jitted modules", a traced
        # module's optimiser "can't optimize a non-leaf Tensor"
        raise TypeError(f"model is or holds a TorchScript module ({scripted[0][0]!r}: "
                        f"{scripted[0][1]}); torch.func cannot differentiate its parameters nor "
                        "an optimiser step them; accepted: the eager torch.nn.Module (before "
                        "torch.jit.script / trace), or the archive saved with torch.jit.save "
                        "given to the command line (python -m sktt predict model.pt ...), which "
                        "wraps it.")
    names, params = trainable_parameters(model)
    if not names:
        raise ValueError("model has no parameter with requires_grad=True; accepted: a model "
                         "with at least one trainable parameter (nothing would be trained).")
    return names, params


def model_device_dtype(model):
    """Device and floating dtype of the model's first parameter (CPU/float32 if none)."""
    for p in model.parameters():
        return p.device, p.dtype
    for b in model.buffers():
        return b.device, b.dtype
    return torch.device("cpu"), torch.float32


@contextlib.contextmanager
def model_untouched(model):
    """Run a block with ``model`` in eval mode and restore everything afterwards.

    Restores every submodule's train/eval flag, every parameter's
    ``requires_grad`` and ``.grad``, and the global torch, numpy and python
    ``random`` RNG states (a user's forward may draw from any of them), also
    when the block raises. sktt never writes parameters in place (it
    differentiates functional copies), so weights need no restore.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    numpy_rng = np.random.get_state()
    python_rng = random.getstate()
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in flags:
            p.requires_grad_(requires_grad)
            p.grad = grad
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(numpy_rng)
        random.setstate(python_rng)


def model_assumptions(model):
    """What sktt assumes about ``model`` that the user may not expect, one sentence each.

    * Train mode, when a Dropout / BatchNorm-like layer is in it: sktt linearises the *eval-mode* function (dropout off, BatchNorm
      running statistics frozen) and restores the user's mode afterwards; real
      fine-tuning in train mode follows a different function.
    * A floating dtype other than float32 / float64 (bfloat16, float16): the model's
      forward and per-sample gradients run in that dtype; Θ, its eigendecomposition
      and the dynamics are computed in float64 from them.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    list of str
        Empty when nothing needs saying.

    Examples
    --------
    >>> import torch
    >>> model_assumptions(torch.nn.Linear(2, 2).eval())
    []
    >>> notes = model_assumptions(torch.nn.Sequential(torch.nn.Linear(2, 2),
    ...                                               torch.nn.Dropout()).bfloat16())
    >>> [n.split(":")[0] for n in notes]
    ['the model is in train mode', 'the model has bfloat16 parameters or buffers']
    """
    notes = []
    # torch modules start in train mode, so only a layer whose function depends on the
    # mode makes the notice worth reading (custom layers reading self.training are rare)
    layers = sorted({type(m).__name__ for m in model.modules()
                     if m.training and isinstance(m, _MODE_DEPENDENT)})
    if layers:
        which = f"its {', '.join(layers)} layer(s) behave differently in train mode"
        notes.append(
            "the model is in train mode: sktt linearises its eval-mode function (dropout off, "
            f"BatchNorm running statistics frozen) and restores your mode afterwards; {which}. "
            "Call model.eval() before fit if eval mode is what you fine-tune, or compare with "
            "real training (compare_with_real) to see the difference.")
    tensors = list(model.parameters()) + list(model.buffers())
    low = sorted({str(t.dtype).replace("torch.", "") for t in tensors
                  if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64)})
    if low:
        notes.append(
            f"the model has {', '.join(low)} parameters or buffers: its outputs and per-sample "
            "gradients are computed in that precision (relative round-off ~1e-2 for bfloat16, "
            "~1e-3 for float16) and then cast to float64, in which Θ, its eigendecomposition and "
            "the dynamics are computed. For a more accurate kernel fit a float32 copy "
            "(copy.deepcopy(model).float()); the step time is best measured on the model as "
            "you train it.")
    return notes


def warn_model_assumptions(model, *, stacklevel=3):
    """Emit each :func:`model_assumptions` note as one :class:`~sktt.exceptions.AssumptionWarning`.

    Call once per fit (not per chunk). Returns the notes.
    """
    from ..exceptions import AssumptionWarning

    notes = model_assumptions(model)
    for note in notes:
        warnings.warn(note, AssumptionWarning, stacklevel=stacklevel)
    return notes
