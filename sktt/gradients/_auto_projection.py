r"""``projection="auto"``: exact Θ when it is cheap, a sketch when it is not.

The exact kernel costs about :math:`(NC)^2 D` multiply-adds (the Gram matrix of
the :math:`NC \times D` Jacobian, whether formed per parameter group or from the
factors of a layer), a projected one about :math:`(NC)^2 D_0` plus one pass over
the per-sample gradients. The rule (deterministic; no timing):

1. exact (``None``) when :math:`D \le D_0` (a projection could only lose
   information) or :math:`(NC)^2 D \le` :data:`EXACT_GRAM_FLOPS`
   (:math:`10^{11}`, about ten seconds of float64 matrix products on one CPU
   core): the demo convnet (38 k parameters) up to N ≈ 330 at C = 5, and every
   small model the exactness tests use;
2. otherwise ``"tensorsketch"``: on the layer-wise path large Linear/Conv
   weights are sketched from their factors without forming per-sample
   gradients; measured on a ResNet-18 at N = 200 (docs/performance.rst):
   tensorsketch 18.6 s, exact 128 s, countsketch 230 s;
3. ``"countsketch"`` when ``jacobian_method="functorch"``: every per-sample
   gradient is formed anyway, and the plain count-sketch is the cheapest hash of
   a formed vector.
"""

from ._projection import PROJECTIONS

__all__ = ["EXACT_GRAM_FLOPS", "resolve_projection"]

#: Largest (N·C)²·D for which ``projection="auto"`` keeps the exact Θ.
EXACT_GRAM_FLOPS = 1e11
#: Accepted values of ``projection`` besides None.
PROJECTION_CHOICES = ("auto",) + PROJECTIONS


def resolve_projection(projection, *, n_rows, n_params, projection_dim, jacobian_method="auto"):
    """The projection to use: ``projection`` itself, or the choice of ``"auto"``.

    Parameters
    ----------
    projection : None, "auto" or one of :data:`~sktt.gradients.PROJECTIONS`
    n_rows : int
        N·C, the rows of the Jacobian.
    n_params : int
        D, the trainable parameters.
    projection_dim : int
        D0.
    jacobian_method : {"auto", "layerwise", "functorch"}, default="auto"

    Returns
    -------
    projection : None or str
        None for the exact Θ.

    Examples
    --------
    >>> from sktt.gradients import resolve_projection
    >>> resolve_projection("auto", n_rows=750, n_params=38_000, projection_dim=2048) is None
    True
    >>> resolve_projection("auto", n_rows=1000, n_params=11_200_000, projection_dim=2048)
    'tensorsketch'
    """
    if projection != "auto":
        return projection
    if n_params <= projection_dim or n_rows ** 2 * n_params <= EXACT_GRAM_FLOPS:
        return None
    return "countsketch" if jacobian_method == "functorch" else "tensorsketch"
