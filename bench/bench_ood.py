"""How well 'unlike the training data' separates real chest X-rays from a run's own test phantoms.

For each run given: Mahalanobis distance with a Ledoit-Wolf covariance (engine.ood) and the k-th nearest-neighbour
distance on L2-normalised and raw features (k = 1, 5, 10, 50), both on engine.ood.feature_vectors; threshold = 99th
percentile of the validation split's distances. Prints AUROC (real vs own test split) and the share flagged of each.

    LUNGLENS_HOME=... python bench/bench_ood.py RUN_ID [RUN_ID ...] [--real FOLDER] [--n 300]
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

import engine
from engine.data.imageio import read_image
from engine.data.transforms import preprocess
from engine.ood import OOD_PERCENTILE, feature_vectors, fit_reference

#: The real chest X-rays beside the repository (../shared/data), when present.
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "covidqu_cxr_infection" / "images"


def _l2(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--real", default=str(REAL), help="a folder of real X-rays, <class>/*.png (default: %(default)s)")
    ap.add_argument("--n", type=int, default=300, help="real images, a seeded sample")
    args = ap.parse_args()
    paths = sorted(glob.glob(f"{args.real}/*/*.png"))
    paths = list(np.random.default_rng(0).choice(paths, min(args.n, len(paths)), replace=False))
    for run_id in args.runs:
        run = engine.load_run(run_id)
        real = np.stack([preprocess(read_image(p), run.config.image_size, clahe=run.config.clahe) for p in paths])
        model = run.load_model().to(engine.pick_device())
        f = {s: feature_vectors(model, run.images(s)) for s in ("train", "val", "test")}
        f["real"] = feature_vectors(model, real)
        ref = fit_reference(f["train"], f["val"])
        scores = {"mahalanobis-ledoitwolf": {s: ref.distances(f[s]) for s in ("val", "test", "real")}}
        for k in (1, 5, 10, 50):
            for name, tf in (("l2", _l2), ("raw", lambda x: x)):
                nn = NearestNeighbors(n_neighbors=min(k, len(f["train"]))).fit(tf(f["train"]))
                scores[f"knn{k}-{name}"] = {s: nn.kneighbors(tf(f[s]))[0][:, -1] for s in ("val", "test", "real")}
        print(f"{run_id}: {len(f['train'])} train / {len(f['val'])} val / {len(f['test'])} test, {len(real)} real, "
              f"D = {f['train'].shape[1]}")
        for name, sc in scores.items():
            thr = np.percentile(sc["val"], OOD_PERCENTILE)
            auc = roc_auc_score(np.r_[np.zeros(len(sc["test"])), np.ones(len(sc["real"]))], np.r_[sc["test"], sc["real"]])
            print(f"  {name:24s} AUROC {auc:.3f}  real flagged {np.mean(sc['real'] > thr):6.1%}  "
                  f"own test flagged {np.mean(sc['test'] > thr):6.1%}")


if __name__ == "__main__":
    main()
