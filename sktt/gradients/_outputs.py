"""The logits of a model call, whatever the model returns.

sktt linearises a function ``x -> (N, C)`` logits. Real models return more than
that: ``transformers`` classifiers return a ``ModelOutput`` (``.logits``), others a
dict or a tuple ``(logits, aux)``. Every place sktt calls the model — outputs at
w0, ``torch.func`` Jacobians, the layer-wise recorder, the Jacobian operator, the
residual norm and the real training loop — goes through :func:`call_model`, so
one ``output=`` selects the same logits everywhere.
"""

from collections.abc import Mapping

import torch

from ._inputs import as_model_inputs

__all__ = ["OUTPUT_ACCEPTED", "call_model", "check_output", "select_logits"]

OUTPUT_ACCEPTED = ("None (a tensor as is; .logits of a transformers ModelOutput or any object "
                   "with .logits; dict['logits']; element 0 of a tuple/list), an attribute "
                   "name or dict key (str), an index (int), or a callable mapping the raw "
                   "output to the (n_samples, n_outputs) logits")


def check_output(output):
    """``output`` if it is a valid selector (None, str, int, callable), else TypeError."""
    if output is None or callable(output) or isinstance(output, str) or (
            isinstance(output, int) and not isinstance(output, bool)):
        return output
    raise TypeError(f"output={output!r} is invalid; accepted: {OUTPUT_ACCEPTED}.")


def _describe(raw):
    if isinstance(raw, torch.Tensor):
        return f"a tensor of shape {tuple(raw.shape)}"
    if isinstance(raw, Mapping):
        return f"{type(raw).__name__} with keys {list(raw.keys())}"
    if isinstance(raw, (tuple, list)):
        return f"a {type(raw).__name__} of length {len(raw)}"
    return type(raw).__name__


def _default(raw):
    if isinstance(raw, torch.Tensor):
        return raw
    # ModelOutput is also a Mapping; .logits first so a None-valued key is not a surprise
    logits = getattr(raw, "logits", None)
    if logits is not None:
        return logits
    if isinstance(raw, Mapping) and "logits" in raw:
        return raw["logits"]
    if isinstance(raw, (tuple, list)) and len(raw) > 0:
        return raw[0]
    raise TypeError(f"the model returned {_describe(raw)}, and output=None found no logits in "
                    f"it; pass output= to select them. Accepted: {OUTPUT_ACCEPTED}.")


def _select(raw, output):
    if output is None:
        return _default(raw)
    if callable(output):
        return output(raw)
    if isinstance(output, str):
        if isinstance(raw, Mapping) and output in raw:
            return raw[output]
        if hasattr(raw, output):
            return getattr(raw, output)
        raise TypeError(f"output={output!r}: the model returned {_describe(raw)}, which has no "
                        f"attribute or key {output!r}. Accepted: {OUTPUT_ACCEPTED}.")
    try:
        return raw[output]
    except (TypeError, IndexError, KeyError) as exc:
        raise TypeError(f"output={output!r}: the model returned {_describe(raw)}, which cannot "
                        f"be indexed by {output!r}. Accepted: {OUTPUT_ACCEPTED}.") from exc


def select_logits(raw, output=None):
    """The ``(N, C)`` logits in a model's raw output.

    Parameters
    ----------
    raw : object
        What ``model(...)`` returned.
    output : None, str, int or callable, default=None
        None: a tensor as is; ``raw.logits`` (a ``transformers`` ``ModelOutput`` or
        any object with ``.logits``); ``raw["logits"]`` for a dict; ``raw[0]`` for a
        tuple or list. A str is an attribute name or dict key, an int an index, a
        callable maps ``raw`` to the logits.

    Returns
    -------
    Tensor of shape (N, C)

    Raises
    ------
    TypeError
        If ``output`` is invalid or selects something that is not a tensor.
    ValueError
        If the selected tensor is not 2-D.

    Examples
    --------
    >>> import torch
    >>> select_logits({"logits": torch.zeros(4, 2), "hidden": torch.ones(4, 8)}).shape
    torch.Size([4, 2])
    >>> select_logits((torch.zeros(4, 2), torch.ones(4)), output=0).shape
    torch.Size([4, 2])
    """
    check_output(output)
    out = _select(raw, output)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"output={output!r} selected {_describe(out)} from the model's output "
                        f"({_describe(raw)}); accepted: {OUTPUT_ACCEPTED}.")
    if out.ndim != 2:
        raise ValueError(f"the model's output has shape {tuple(out.shape)}; accepted: a 2-D "
                         f"(n_samples, n_outputs) tensor (output={output!r} selected it). Pass "
                         "output= (an attribute name, key, index, or a callable that selects "
                         "or reshapes the logits) or wrap the model.")
    return out


def call_model(model, x, output=None):
    """Call ``model`` on the inputs ``x`` and return its ``(n, C)`` logits.

    Parameters
    ----------
    model : callable
        Usually a ``torch.nn.Module``; called as ``model(*args, **kwargs)``.
    x : ModelInputs, Tensor, tuple of Tensor or dict of str to Tensor
        A batch of inputs (see :func:`~sktt.gradients.as_inputs`); a tuple is
        positional, a dict keyword arguments.
    output : None, str, int or callable, default=None
        Which part of the raw output are the logits (:func:`select_logits`).
        None uses the selector bound to ``x`` (:meth:`ModelInputs.bind_output`),
        if any, else the default rule.

    Returns
    -------
    Tensor of shape (n, C)
    """
    x = as_model_inputs(x)
    if output is None:
        output = x.output
    return select_logits(x.call(model), output)
