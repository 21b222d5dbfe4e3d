"""How well a classifier's probabilities match its accuracy: the negative
log-likelihood and the expected calibration error, the figures E3 is judged
by (docs/training.md, "E3 ensembles").  Plain numpy, so that tests can feed
hand-made probabilities."""

import numpy as np

ECE_BINS = 15


def negative_log_likelihood(log_probs, labels):
    """Mean -log p(label) in nats; log_probs [N, K] (log of probabilities
    that sum to one per row), labels [N] ints."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    labels = np.asarray(labels)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probs, labels, bins=ECE_BINS):
    """Guo et al.'s ECE: images binned by confidence (the top probability)
    into `bins` equal-width bins (lo, hi] over [0, 1]; the sum over bins of
    the bin's share of images times |accuracy - mean confidence| in it.
    The predicted class is the lowest index among equal top probabilities,
    as the engine's top-k."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin b holds confidences in (edge b, edge b+1], the edges being
    # numpy.linspace(0, 1, bins + 1) as in the usual reference code.
    which = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)
