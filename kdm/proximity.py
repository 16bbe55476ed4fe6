"""Does proximity in a space go with semantic similarity of the samples? The paper's second theoretical result
(nearby Koopman latents give similar samples), measured: for points of one space (x_T, a projection of it, z_T,
C z_T, z_0) beside the labels of the samples they make and the samples' evaluator features,

- knn: the share of each point's k nearest neighbours (Euclidean) whose sample has its label, against chance, the
  share a random other point would have (the sum of the squared label frequencies);
- ari, nmi: agreement of k-means clusters of the space (as many as there are labels) with the labels;
- dist_corr: Spearman's rank correlation between the distances of random pairs of points in the space and the
  distances of their samples' evaluator features.

Every draw comes from `seed`: same inputs, same numbers."""
from __future__ import annotations

import numpy as np


def knn_agreement(points: np.ndarray, labels: np.ndarray, k: int) -> float:
    from sklearn.neighbors import NearestNeighbors
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)[:, 1:]
    return float((labels[neighbours] == labels[:, None]).mean())


def chance(labels: np.ndarray) -> float:
    """The knn agreement of neighbours drawn at random (without the point itself)."""
    counts = np.unique(labels, return_counts=True)[1].astype(np.float64)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def cluster_agreement(points: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    clusters = KMeans(n_clusters=len(np.unique(labels)), n_init=4, random_state=seed).fit_predict(points)
    return {"ari": float(adjusted_rand_score(labels, clusters)), "nmi": float(normalized_mutual_info_score(labels,
                                                                                                          clusters))}


def distance_correlation(points: np.ndarray, features: np.ndarray, pairs: int, seed: int) -> float:
    from scipy.stats import spearmanr
    rng = np.random.default_rng(seed)
    i, j = rng.integers(len(points), size=(2, pairs))
    keep = i != j
    i, j = i[keep], j[keep]
    return float(spearmanr(np.linalg.norm(points[i] - points[j], axis=1),
                           np.linalg.norm(features[i] - features[j], axis=1)).statistic)


def random_projection(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """x (n, d) through a fixed Gaussian matrix to `dim` dimensions: a control that keeps x's geometry roughly
    (Johnson-Lindenstrauss) and knows nothing of the samples."""
    return x @ np.random.default_rng(seed).standard_normal((x.shape[1], dim)) / np.sqrt(dim)


def proximity(spaces: dict[str, np.ndarray], labels: dict[str, np.ndarray], features: np.ndarray, k: int,
              pairs: int, seed: int) -> dict:
    """{space: {knn, ari, nmi (per label set: `<measure>` for the first, `<measure>_<name>` for the others),
    dist_corr}} and {label set: chance}."""
    out = {}
    for space, points in spaces.items():
        points = points.reshape(len(points), -1).astype(np.float64)
        row = {}
        for n, (name, y) in enumerate(labels.items()):
            suffix = "" if n == 0 else f"_{name}"
            row[f"knn{suffix}"] = knn_agreement(points, y, k)
            row.update({f"{m}{suffix}": v for m, v in cluster_agreement(points, y, seed).items()})
        row["dist_corr"] = distance_correlation(points, features, pairs, seed)
        out[space] = row
    return {"spaces": out, "chance": {name: chance(y) for name, y in labels.items()}}


def embeddings(points: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """2-D views of a space for the figure: its first two principal components and a t-SNE embedding."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    points = points.reshape(len(points), -1).astype(np.float64)
    return {"PCA": PCA(n_components=2, random_state=seed).fit_transform(points),
            "t-SNE": TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(points) - 1) / 3),
                          random_state=seed).fit_transform(points)}
