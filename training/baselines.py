"""The simple baseline a learned text branch must beat: TF-IDF and logistic regression.

On IU X-ray normal/abnormal this plain model is strong (the words radiologists use for
abnormal findings are few and specific), which makes it the honest yardstick for any learned
text branch, more than the published seed figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def tfidf_logreg_probabilities(
    train_texts: Sequence[str | None],
    train_targets: np.ndarray,
    test_texts: Sequence[str | None],
    c: float = 10.0,
) -> np.ndarray:
    """Fit word 1-2-gram TF-IDF + logistic regression per label; return test probabilities.

    Parameters
    ----------
    train_texts, test_texts : sequence of str or None
        Cleaned texts (the same cleaning the learned model reads); ``None`` reads as empty.
    train_targets : numpy.ndarray
        ``(N, L)`` 0/1.
    c : float
        Inverse regularisation strength.

    Returns
    -------
    numpy.ndarray
        ``(M, L)`` probabilities; a label with one class in training gets its prior.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    train_matrix = vectorizer.fit_transform([t or "" for t in train_texts])
    test_matrix = vectorizer.transform([t or "" for t in test_texts])
    out = np.zeros((len(test_texts), train_targets.shape[1]), dtype=np.float32)
    for j in range(train_targets.shape[1]):
        y = train_targets[:, j]
        if y.min() == y.max():
            out[:, j] = y.mean()
            continue
        model = LogisticRegression(C=c, max_iter=2000).fit(train_matrix, y)
        out[:, j] = model.predict_proba(test_matrix)[:, 1]
    return out
