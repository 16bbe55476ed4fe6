"""Figures people look at: loss curves, sample scatters and image grids, the checkerboard analysis figure,
Koopman spectra."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdm.images import to_uint8  # noqa: E402
from kdm.io import atomic_path  # noqa: E402


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def loss_curve(rows: list[dict], path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    if not rows:        # a loaded model: nothing was trained
        ax.text(0.5, 0.5, "no training: loaded model", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title)
        _save(fig, path)
        return
    steps = [r["step"] for r in rows]
    for key in rows[0]:
        if key != "step":
            ax.plot(steps, [r[key] for r in rows], label=key, lw=1.2 if key == "loss" else 0.8)
    ax.set(xlabel="iteration", ylabel="loss", yscale="log", title=title)
    ax.legend()
    _save(fig, path)


def scatter(x: np.ndarray, path, title: str, lim: float) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, lw=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    _save(fig, path)


def analysis(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]], path, lim: float) -> None:
    """The paper's 2x2 figure: per model, generated x_0 and its x_T, coloured by the KMeans cluster of
    x_0; outliers (DBSCAN noise or |z| > 3) drawn as black crosses in both panels."""
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 4 * len(rows)), squeeze=False)
    for (name, x0, xT, cluster, outlier), (a0, aT) in zip(rows, axes):
        for ax, pts, lbl in ((a0, x0, "x_0"), (aT, xT, "x_T")):
            ax.scatter(pts[~outlier, 0], pts[~outlier, 1], c=cluster[~outlier], cmap="tab10", vmin=0, vmax=9,
                       s=1.5, lw=0)
            ax.scatter(pts[outlier, 0], pts[outlier, 1], c="k", marker="x", s=8, lw=0.6)
            ax.set(aspect="equal", title=f"{name}: {lbl} ({outlier.sum()} outliers)")
        a0.set(xlim=(-lim, lim), ylim=(-lim, lim))
    _save(fig, path)


def latent(views: dict[str, dict[str, np.ndarray]], labels: np.ndarray, scores: dict, path, title: str) -> None:
    """One column per space (x_T, KDM's latents), PCA above t-SNE, each point coloured by its sample's label;
    each column titled with its knn label agreement."""
    fig, axes = plt.subplots(2, len(views), figsize=(2.6 * len(views), 5.4), squeeze=False)
    classes = np.unique(labels)
    colour = np.searchsorted(classes, labels)
    for col, (space, by) in enumerate(views.items()):
        for row, (method, xy) in enumerate(by.items()):
            ax = axes[row, col]
            ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="tab10" if len(classes) <= 10 else "tab20", s=3, lw=0,
                       vmin=0, vmax=9 if len(classes) <= 10 else 19)
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{space}: {method}" + (f"\nknn {scores[space]['knn']:.2f}" if row == 0 else ""),
                         fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def spectrum(matrix, path, title: str) -> None:
    """Eigenvalues of a Koopman operator in the complex plane, with the unit circle."""
    import torch
    eig = torch.linalg.eigvals(matrix.to(torch.float64)).numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), "k-", lw=0.8)
    ax.scatter(eig.real, eig.imag, s=6)
    lim = max(1.1, float(np.abs(eig).max()) * 1.05)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="Re", ylabel="Im", title=title)
    _save(fig, path)


def _tiles(images: np.ndarray) -> np.ndarray:
    """(n, c, h, w) images in [-1, 1] as (n, h, w[, 3]) uint8 for imshow: the pixels EDM would write."""
    x = to_uint8(images).numpy()
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


def image_grid(images: np.ndarray, path, title: str, labels=None) -> None:
    """Up to 100 images on a square grid; conditional samples sorted by requested class, each titled with it."""
    order = np.argsort(labels, kind="stable") if labels is not None else np.arange(len(images))
    tiles = _tiles(images)[order]
    side = int(np.ceil(np.sqrt(len(tiles))))
    fig, axes = plt.subplots(side, side, figsize=(side * 0.6, side * 0.6 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(tiles):
            ax.imshow(tiles[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if labels is not None:
                ax.set_title(str(int(labels[order[i]])), fontsize=6, pad=1)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def quality_curve(table, path, title: str) -> None:
    """Each quality metric of a run's snapshots against training iterations, one panel per metric."""
    metrics = [c for c in ("fid", "kid", "precision", "recall", "class_acc", "coverage", "sw2") if c in table]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.6 * max(1, len(metrics)), 3.2), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        ax.plot(table["step"], table[metric], "o-", ms=3)
        ax.set(xlabel="iteration", title=metric)
    if not metrics:
        axes[0, 0].text(0.5, 0.5, "no snapshots", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def quality_vs_speed(ours, published, metrics: dict, path) -> None:
    """What one step buys: per experiment, quality (its metric in `metrics`: FID, 2-D precision) against ms/sample
    on a log axis, our teacher and students as points (bars: std over training seeds), and published rows measured with
    the same evaluator against the same reference as horizontal lines (their cost on our machine is unknown)."""
    timed = ours["ms_per_sample"].notna() if "ms_per_sample" in ours else ours["model"].isna()
    untimed, ours = ours[~timed], ours[timed]       # real data: the evaluator's floor, drawn as a line
    exps = list(dict.fromkeys(ours["experiment"]))
    fig, axes = plt.subplots(1, max(1, len(exps)), figsize=(4.6 * max(1, len(exps)), 4), squeeze=False)
    if not exps:
        axes[0, 0].text(0.5, 0.5, "no timed models", ha="center", va="center", transform=axes[0, 0].transAxes)
    for ax, exp in zip(axes.flat, exps):
        rows = ours[ours["experiment"] == exp]
        metric = metrics[exp]
        for _, r in rows.iterrows():
            std = r.get(f"{metric}_std")
            ax.errorbar(r["ms_per_sample"], r[metric], yerr=None if std is None or np.isnan(std) else std, fmt="o",
                        ms=6, capsize=3, label=f"{r['model']} ({int(r['nfe'])} NFE)")
        floors = untimed[(untimed["experiment"] == exp) & untimed[metric].notna()]
        for (_, r), ls in zip(floors.iterrows(), (":", "-.", "--")):
            ax.axhline(r[metric], ls=ls, lw=1, color="k", label=f"{r['model']} (real data, no sampling)")
        same = published[(published["experiment"] == exp) & published[metric].notna()] \
            if metric in published else published.iloc[:0]
        same = same[same["extractor"].isin(rows["extractor"]) & same["reference"].isin(rows["reference"])] \
            if "extractor" in rows and "reference" in rows else same.iloc[:0]
        for _, r in same.iterrows():
            ax.axhline(r[metric], ls="--", lw=0.8, color="gray")
            ax.annotate(f"{r['model']}, {r['source']}", (0.01, r[metric]), xycoords=("axes fraction", "data"),
                        fontsize=6, color="gray", va="bottom")
        better = "lower" if metric == "fid" else "higher"
        batch = rows["speed_batch"].dropna().iloc[0] if "speed_batch" in rows and rows["speed_batch"].notna().any() \
            else None
        ax.set(xscale="log", xlabel="ms / sample" + (f" (batch {int(batch)})" if batch is not None else ""),
               ylabel=f"{metric} ({better} is better)", title=exp)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())      # decade labels only: minor ones overlap
        ax.legend(fontsize=7)
    fig.suptitle("quality against sampling cost; black lines: real data (the evaluator's floor); grey dashed: "
                 "published rows with the same evaluator and reference",
                 fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def image_pairs(top: np.ndarray, bottom: np.ndarray, path, names: tuple[str, str]) -> None:
    """Two rows from the same noise: e.g. the teacher's samples above a student's."""
    fig, axes = plt.subplots(2, len(top), figsize=(len(top) * 0.6, 1.6), squeeze=False)
    for row, (images, name) in enumerate(((top, names[0]), (bottom, names[1]))):
        for ax, tile in zip(axes[row], _tiles(images)):
            ax.imshow(tile, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=7)
    fig.suptitle("same noise", fontsize=8)
    _save(fig, path)


def benchmarks(table, path) -> None:
    """The benchmark table at a glance: sampling, training vs store reads, memory, sharding."""
    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    s = table[table["section"] == "sampling"]
    for (exp, model), g in s.groupby(["experiment", "model"], sort=False):
        ax[0].loglog(g["batch"], g["samples_per_s"], "o-", label=f"{exp} {model}")
    ax[0].set(xlabel="batch", ylabel="samples / s", title="sampling")
    ax[0].legend(fontsize=7)
    t = table[table["section"] == "training"]
    names = [f"{e}\n{m}" for e, m in zip(t["experiment"], t["model"])]
    x = np.arange(len(t))
    ax[1].bar(x - 0.2, t["samples_per_s"], 0.4, label="training consumes")
    ax[1].bar(x + 0.2, t["store_samples_per_s"], 0.4, label="store serves")
    ax[1].set(yscale="log", ylabel="samples / s", title="training vs store reads", xticks=x)
    ax[1].set_xticklabels(names, fontsize=7)
    ax[1].legend(fontsize=7)
    m = table[table["section"] == "memory"]
    ax[2].bar([f"{int(p)} pairs" for p in m["pairs"]], m["peak_rss_mb"])
    ax[2].set(ylabel="peak RSS (MB)", title="training memory vs store size")
    p = table[table["section"] == "pairs"]
    ax[3].plot(p["shards"], p["pairs_per_s"], "o-")
    ax[3].set(xscale="log", xlabel="shards", ylabel="pairs / s", title="pair sampling vs shards")
    fig.tight_layout()
    _save(fig, path)


def sweep(table, x, metric: str, lower_is_better: bool, teacher, own: dict, published, reference, path,
          title: str) -> None:
    """A sweep's headline metric per point, one series per student (bars: std over seeds): a line against column
    `x` of the table when it is numeric (an axis, or e.g. params; log scale where its values span a decade or
    more), else markers at the points in order; the teacher and the experiment's own students (where a point is one) as
    horizontal lines; published rows that have `x` as squares, filled where they share our reference, hollow
    (and said not comparable) where not."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2 if len(published) else 4.6))
    numeric = x is not None and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                    for v in table[x])
    names = list(dict.fromkeys(table["point"]))
    for model, rows in table.groupby("model", sort=False):
        at = rows[x].astype(float) if numeric else [names.index(p) for p in rows["point"]]
        ax.errorbar(at, rows[metric], yerr=rows.get(f"{metric}_std"), fmt="o-" if numeric else "o", capsize=3,
                    label=model)        # points in order are not a continuum: no line between them
    if teacher is not None:
        ax.axhline(teacher, color="k", ls=":", lw=1, label="teacher")
    for (model, value), ls in zip(own.items(), ("--", "-.")):
        ax.axhline(value, color="gray", ls=ls, lw=0.8, label=f"{model} (the experiment's own)")
    if numeric:
        for (source, ref), rows in published.groupby(["source", "reference"], sort=False):
            rows = rows.sort_values(x)
            ax.plot(rows[x], rows[metric], "s--", ms=5, lw=0.7, mfc=None if ref == reference else "none",
                    label=f"{source}: {', '.join(rows['model'])}"
                    + ("" if ref == reference else f" (reference {ref}: not comparable)"))
        values = np.concatenate([table[x].to_numpy(float)] + ([published[x].to_numpy(float)] if len(published) else []))
        if values.min() > 0 and values.max() / values.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(x)
    else:
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel("point")
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.set_title(title, fontsize=7)
    if numeric:
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1 if len(published) else 2)
    else:                               # below the plot it would cover the points' rotated names
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    _save(fig, path)
