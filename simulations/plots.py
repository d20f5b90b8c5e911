"""Plots of a growth run: the adaptive weights per stage, and t-SNE projections of the aligned space before and after.

Used by the Babel experiment and the demo; matplotlib (``edgebind[sim]``) draws off-screen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.crossmodal import modality_gaps
from common.evaluate import embed
from common.growth import StageRecord
from common.towers import AlignedModel


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weights(records: list[StageRecord], out: Path) -> list[Path]:
    """Adaptive weights w_a<-b and w_b<-a per step, one PNG per stage."""
    plt = pyplot()
    files = []
    out.mkdir(parents=True, exist_ok=True)
    for r in records:
        w = np.asarray(r.weights)
        a, b = r.stage["connecting"], r.stage["branch"]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        steps = np.arange(1, len(w) + 1)
        k = max(1, len(w) // 30)
        smooth = lambda v: np.convolve(v, np.ones(k) / k, mode="valid")  # noqa: E731
        for col, label, c in ((0, f"w {a}<-{b}", "tab:blue"), (1, f"w {b}<-{a}", "tab:orange")):
            ax.plot(steps, w[:, col], color=c, alpha=0.25, lw=0.8)
            ax.plot(steps[k - 1 :], smooth(w[:, col]), color=c, lw=1.8, label=label)
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set(xlabel="step", ylabel="weight", title=f"stage {r.index + 1}: {a} <-> {b} on {r.stage['source']!r}", ylim=(0, 1))
        ax.legend(loc="best")
        fig.tight_layout()
        path = out / f"weights_stage{r.index + 1}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def gaps_before_after(before: AlignedModel, after: AlignedModel, feats: dict[str, np.ndarray], mods: list[str]) -> dict[str, dict[str, float]]:
    """The modality gap (``common.crossmodal.modality_gap``) of every pair, on every given window, before and after alignment."""
    return {tag: {p: g["gap"] for p, g in modality_gaps(embed(model, {m: feats[m] for m in mods})).items()} for tag, model in (("before", before), ("after", after))}


def plot_projections(before: AlignedModel, after: AlignedModel, feats: dict[str, np.ndarray], y: np.ndarray, label_names: list[str], mods: list[str], n: int, iterations: int, seed: int, out: Path,
                     gaps: dict[str, dict[str, float]] | None = None) -> list[Path]:
    """t-SNE of the same test windows' embeddings in every modality, before and after alignment.

    Each figure's title gives the modality gap of every pair, measured on every
    given window in the embedding itself, not on the projection (``gaps``, as
    ``gaps_before_after`` returns; computed when not given).
    """
    from sklearn.manifold import TSNE

    plt = pyplot()
    gaps = gaps if gaps is not None else gaps_before_after(before, after, feats, mods)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(y), size=min(n, len(y)), replace=False))
    files = []
    for tag, model in (("before", before), ("after", after)):
        z = embed(model, {m: feats[m][rows] for m in mods})
        pts = np.concatenate([z[m] for m in mods])
        who = np.repeat(np.arange(len(mods)), len(rows))
        lab = np.tile(y[rows], len(mods))
        xy = TSNE(2, perplexity=min(30.0, max(5.0, len(pts) / 8)), init="pca", max_iter=iterations, random_state=seed).fit_transform(pts)
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        markers = "o^sDvP"
        for i, m in enumerate(mods):
            sel = who == i
            axes[0].scatter(xy[sel, 0], xy[sel, 1], s=9, alpha=0.7, label=m)
            for c in np.unique(lab):
                s2 = sel & (lab == c)
                axes[1].scatter(xy[s2, 0], xy[s2, 1], s=9, alpha=0.7, marker=markers[i % len(markers)], color=f"C{c}",
                                label=(label_names[c] if label_names and i == 0 else None))
        axes[0].set_title(f"{tag} alignment: colour = modality")
        axes[1].set_title(f"{tag} alignment: colour = activity, marker = modality")
        axes[0].legend(markerscale=2)
        axes[1].legend(markerscale=2, fontsize=7)
        fig.suptitle(f"modality gap {tag} alignment (centroid distance / spread; 0 = one region): "
                     + ", ".join(f"{p} {g:.2f}" for p, g in gaps[tag].items()), fontsize=9)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        path = out / f"projection_{tag}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files
