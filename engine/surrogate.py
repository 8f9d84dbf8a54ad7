"""Wan et al. sec. 4 (future work): an interpretable decision-tree surrogate of the CNN.

A scikit-learn decision tree is fitted on the train split to the CNN's *predictions* (the argmax of its stored
probabilities, not the true labels), on interpretable inputs (``engine.surrogate_features``: LBP bins, lung-zone
statistics, bright areas) and / or the principal components of the CNN's deep features. Its fidelity is how often it
agrees with the CNN on the test split; its tree, the images per node and one image's path through it show how the
CNN's decisions, right or wrong, can be read in named features ("explore the reasons for misclassification").
Every result is JSON, cached per run and parameters.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score
from sklearn.tree import DecisionTreeClassifier

from .errors import ConfigError, DataError
from .progress import CancelCheck, Progress, scaled, step
from .store import cached_json, stable_hash
from .surrogate_features import handcrafted_refusal, run_deep_pcs, run_handcrafted, stack_inputs

if TYPE_CHECKING:
    from .runs import Run

Inputs = Literal["handcrafted", "deep", "both"]
#: The surrogate's input sets: interpretable features, deep-feature principal components, or both side by side.
INPUTS: tuple[str, ...] = ("handcrafted", "deep", "both")
#: Tree depths of the fidelity curve.
DEPTHS: tuple[int, ...] = tuple(range(1, 9))
#: The depth shown by default: the shallowest one whose test fidelity reaches this, else ``FALLBACK_DEPTH``.
FIDELITY_TARGET = 0.9
FALLBACK_DEPTH = 3
#: Example test images kept per leaf (those the CNN misclassified first).
N_EXAMPLES = 4
#: Seed of the tree (ties between equally good splits) and of the deep features' PCA.
SEED = 0


def input_choices(run: Run) -> tuple[str, ...]:
    """The input sets that apply to ``run``: all of ``INPUTS`` for a 2-D run, deep PCs only for a 3-D one."""
    return INPUTS if handcrafted_refusal(run) is None else ("deep",)


def _check(run: Run, inputs: str, depths: Sequence[int]) -> None:
    """ConfigError for unknown inputs, handcrafted inputs of a 3-D run, or a depth below 1."""
    if inputs not in INPUTS:
        raise ConfigError(f"Unknown surrogate inputs {inputs!r}: choose one of {', '.join(INPUTS)}.")
    if inputs != "deep" and (reason := handcrafted_refusal(run)):
        raise ConfigError(reason)
    if not depths or min(depths) < 1:
        raise ConfigError(f"Tree depths must be 1 or more, got {list(depths)}.")


def surrogate_inputs(run: Run, inputs: Inputs = "handcrafted", seed: int = SEED, *, progress: Progress | None = None,
                     cancel: CancelCheck | None = None) -> tuple[np.ndarray, list[str]]:
    """The surrogate's input matrix (N, F) float32 for every image, in ``run.predictions`` order, and the features'
    names; each group cached per run."""
    _check(run, inputs, [1])
    parts = []
    both = inputs == "both"
    if inputs in ("handcrafted", "both"):
        parts.append(run_handcrafted(run, progress=scaled(progress, 0.0, 0.5 if both else 1.0), cancel=cancel))
    if inputs in ("deep", "both"):
        parts.append(run_deep_pcs(run, seed=seed, progress=scaled(progress, 0.5 if both else 0.0, 1.0),
                                  cancel=cancel))
    return stack_inputs(parts)


def cnn_predictions(run: Run) -> np.ndarray:
    """The CNN's predicted class index of every image: the argmax of its stored class probabilities."""
    return run.predictions[[f"prob_{c}" for c in run.classes]].to_numpy(dtype=float).argmax(axis=1)


def _artifact_key(run: Run, inputs: str, seed: int) -> str:
    """What a fitted surrogate depends on, for its artifact's name: inputs, seed and a digest of the CNN's
    predictions (so that the surrogate of other predictions of the same images is never served)."""
    return f"{inputs}-seed{seed}-cnn{stable_hash(cnn_predictions(run).tolist(), 8)}"


def _splits(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train and test rows of ``run.predictions``; DataError when either is empty."""
    split = run.predictions["split"].to_numpy()
    train, test = split == "train", split == "test"
    if not train.any() or not test.any():
        raise DataError(f"The surrogate needs train and test images; run {run.id} has {int(train.sum())} train and "
                        f"{int(test.sum())} test images.")
    return train, test


def fit_surrogate(x: np.ndarray, cnn: np.ndarray, depth: int, seed: int = SEED) -> DecisionTreeClassifier:
    """A decision tree of at most ``depth`` levels fitted to the CNN's predicted classes ``cnn``, seeded."""
    return DecisionTreeClassifier(max_depth=int(depth), random_state=seed).fit(x, cnn)


def _scores(tree: DecisionTreeClassifier, x: np.ndarray, cnn: np.ndarray, y: np.ndarray, train: np.ndarray,
            test: np.ndarray) -> dict[str, float]:
    """Fidelity (agreement with the CNN) on test and train, and the tree's and the CNN's test accuracy vs truth."""
    tree_test = tree.predict(x[test])
    return {"test_fidelity": float(accuracy_score(cnn[test], tree_test)),
            "train_fidelity": float(accuracy_score(cnn[train], tree.predict(x[train]))),
            "test_accuracy": float(accuracy_score(y[test], tree_test)),
            "cnn_test_accuracy": float(accuracy_score(y[test], cnn[test]))}


def surrogate_fidelity(run: Run, inputs: Inputs = "handcrafted", depths: Sequence[int] = DEPTHS, seed: int = SEED, *,
                       progress: Progress | None = None, cancel: CancelCheck | None = None) -> pd.DataFrame:
    """One row per tree depth: test and train fidelity (agreement with the CNN's predictions), the tree's and the
    CNN's test accuracy against the true labels, and the tree's leaves and actual depth.

    ``df.attrs``: inputs, n_features, n_train, n_test. Cached per run, inputs, depths and seed (the inputs too).
    ``progress(fraction, text)`` hears of each step; ``cancel()`` returning True stops between them.
    """
    depths = tuple(int(d) for d in depths)
    _check(run, inputs, depths)

    def compute() -> dict[str, Any]:
        x, _ = surrogate_inputs(run, inputs, seed, progress=scaled(progress, 0.0, 0.85), cancel=cancel)
        cnn, y = cnn_predictions(run), run.predictions["y"].to_numpy(dtype=int)
        train, test = _splits(run)
        rows = []
        for i, depth in enumerate(depths):
            step(progress, cancel, 0.85 + 0.15 * i / len(depths), f"fitting the tree of depth {depth}")
            tree = fit_surrogate(x[train], cnn[train], depth, seed)
            rows.append({"depth": depth, **_scores(tree, x, cnn, y, train, test), "leaves": int(tree.get_n_leaves()),
                         "actual_depth": int(tree.get_depth())})
        return {"rows": rows, "n_features": int(x.shape[1]), "n_train": int(train.sum()), "n_test": int(test.sum())}

    name = f"surrogate-fidelity-{_artifact_key(run, inputs, seed)}-d{'_'.join(map(str, depths))}.json"
    cached = cached_json(run.artifact(name), compute)
    df = pd.DataFrame(cached["rows"])
    df.attrs.update(inputs=inputs, **{k: cached[k] for k in ("n_features", "n_train", "n_test")})
    return df


def default_depth(table: pd.DataFrame) -> int:
    """The shallowest depth of a ``surrogate_fidelity`` table whose test fidelity reaches ``FIDELITY_TARGET``; else
    ``FALLBACK_DEPTH`` (or the table's nearest depth to it)."""
    reached = table.loc[table["test_fidelity"] >= FIDELITY_TARGET, "depth"]
    if len(reached):
        return int(reached.min())
    depths = table["depth"].to_numpy()
    return int(depths[np.abs(depths - FALLBACK_DEPTH).argmin()])


def _node_depths(left: np.ndarray, right: np.ndarray) -> list[int]:
    """Depth of each node of a fitted tree (the root: 0); children always come after their parent."""
    depth = [0] * len(left)
    for node in range(len(left)):
        for child in (left[node], right[node]):
            if child >= 0:
                depth[child] = depth[node] + 1
    return depth


def _examples(rows: np.ndarray, cnn: np.ndarray, y: np.ndarray, tree_pred: np.ndarray, files: np.ndarray,
              ) -> list[dict[str, Any]]:
    """Up to ``N_EXAMPLES`` test images of one leaf: those the CNN misclassified first, then those where the tree
    disagrees with the CNN, then the rest, each in row order."""
    order = sorted(range(len(rows)), key=lambda i: (cnn[i] == y[i], tree_pred[i] == cnn[i], rows[i]))
    return [{"row": int(rows[i]), "file": str(files[i]), "truth": int(y[i]), "cnn": int(cnn[i]),
             "tree": int(tree_pred[i])} for i in order[:N_EXAMPLES]]


def _tree_dict(tree: DecisionTreeClassifier, names: list[str], n_classes: int, x: np.ndarray, cnn: np.ndarray,
               y: np.ndarray, train: np.ndarray, test: np.ndarray, files: np.ndarray) -> list[dict[str, Any]]:
    """The fitted tree's nodes as JSON-able dicts (see ``surrogate_tree``)."""
    t = tree.tree_
    onehot = np.eye(n_classes, dtype=np.int64)
    # (nodes, classes): how many train / test images pass through each node, by the CNN's predicted class.
    counts = {s: np.asarray(tree.decision_path(x[rows]).T @ onehot[cnn[rows]]) for s, rows in
              (("train", train), ("test", test))}
    test_rows = np.flatnonzero(test)
    leaf_of, tree_pred = tree.apply(x[test]), tree.predict(x[test])
    depths = _node_depths(t.children_left, t.children_right)
    nodes = []
    for node in range(t.node_count):
        leaf = t.children_left[node] < 0
        entry: dict[str, Any] = {
            "id": node, "depth": depths[node], "leaf": bool(leaf),
            "feature": None if leaf else names[t.feature[node]],
            "feature_index": None if leaf else int(t.feature[node]),
            "threshold": None if leaf else float(t.threshold[node]),
            "left": None if leaf else int(t.children_left[node]),
            "right": None if leaf else int(t.children_right[node]),
            "n_train": int(t.n_node_samples[node]), "cnn_counts": counts["train"][node].tolist(),
            "n_test": int(counts["test"][node].sum()), "cnn_counts_test": counts["test"][node].tolist(),
            "predicted": int(tree.classes_[t.value[node][0].argmax()]), "impurity": float(t.impurity[node]),
        }
        if leaf:
            here = leaf_of == node
            entry["examples"] = _examples(test_rows[here], cnn[test][here], y[test][here], tree_pred[here],
                                          files[test][here])
            entry["n_test_cnn_wrong"] = int((cnn[test][here] != y[test][here]).sum())
        nodes.append(entry)
    return nodes


def surrogate_tree(run: Run, depth: int, inputs: Inputs = "handcrafted", seed: int = SEED, *,
                   progress: Progress | None = None, cancel: CancelCheck | None = None) -> dict[str, Any]:
    """The surrogate of ``depth`` levels as JSON: its scores (``surrogate_fidelity``'s columns) and ``nodes``.

    Each node: id, depth, leaf, feature (name; None at a leaf), feature_index, threshold (an image goes ``left`` when
    its value is <= threshold, else ``right``), n_train (train images reaching it), cnn_counts (those images by the
    CNN's predicted class), n_test and cnn_counts_test (the same on the test split), predicted (the tree's class
    there), impurity (Gini); a leaf also has ``examples`` (up to ``N_EXAMPLES`` test images: row, file, truth, cnn,
    tree; CNN-misclassified first) and n_test_cnn_wrong. Cached per run, depth, inputs and seed.
    """
    _check(run, inputs, [int(depth)])

    def compute() -> dict[str, Any]:
        x, names = surrogate_inputs(run, inputs, seed, progress=scaled(progress, 0.0, 0.9), cancel=cancel)
        step(progress, cancel, 0.9, f"fitting the tree of depth {depth}")
        cnn, y = cnn_predictions(run), run.predictions["y"].to_numpy(dtype=int)
        train, test = _splits(run)
        tree = fit_surrogate(x[train], cnn[train], depth, seed)
        files = run.predictions["file"].to_numpy().astype(str)
        return {"depth": int(depth), "inputs": inputs, "seed": seed, "classes": list(run.classes),
                "n_features": int(x.shape[1]), "n_train": int(train.sum()), "n_test": int(test.sum()),
                **_scores(tree, x, cnn, y, train, test),
                "nodes": _tree_dict(tree, names, len(run.classes), x, cnn, y, train, test, files)}

    return cached_json(run.artifact(f"surrogate-tree-{_artifact_key(run, inputs, seed)}-depth{int(depth)}.json"),
                       compute)


def surrogate_path(run: Run, depth: int, inputs: Inputs = "handcrafted", row: int = 0,
                   seed: int = SEED) -> list[dict[str, Any]]:
    """Image ``row``'s (of ``run.predictions``) route through ``surrogate_tree``: one step per decision (node,
    feature, threshold, the image's value, went ``left`` (value <= threshold) or ``right``, next node, text), then the
    leaf (node, leaf True, tree / cnn / truth class indices, n_train, cnn_counts, text)."""
    tree = surrogate_tree(run, depth, inputs, seed)
    x, _ = surrogate_inputs(run, inputs, seed)
    if not 0 <= row < len(x):
        raise DataError(f"Image row {row} is out of range: the run has {len(x)} images.")
    nodes, classes = tree["nodes"], tree["classes"]
    steps: list[dict[str, Any]] = []
    node = nodes[0]
    while not node["leaf"]:
        value = float(x[row, node["feature_index"]])
        left = value <= node["threshold"]  # sklearn's rule, on the same float32 value
        nxt = node["left"] if left else node["right"]
        steps.append({"node": node["id"], "feature": node["feature"], "threshold": node["threshold"], "value": value,
                      "went": "left" if left else "right", "next": nxt,
                      "text": f"{node['feature']} = {value:.4g} {'≤' if left else '>'} {node['threshold']:.4g}"})
        node = nodes[nxt]
    cnn, truth = int(cnn_predictions(run)[row]), int(run.predictions["y"].iloc[row])
    verdict = "agrees with" if node["predicted"] == cnn else "disagrees with"
    steps.append({"node": node["id"], "leaf": True, "tree": node["predicted"], "cnn": cnn, "truth": truth,
                  "n_train": node["n_train"], "cnn_counts": node["cnn_counts"],
                  "text": f"leaf {node['id']}: the tree says {classes[node['predicted']]} ({verdict} the CNN's "
                          f"{classes[cnn]}); the true class is {classes[truth]}"})
    return steps


def image_choices(run: Run) -> dict[int, bool]:
    """Test rows of ``run.predictions`` for a path trace -> whether the CNN misclassified the image; those it
    misclassified first, each group in row order."""
    preds = run.predictions
    test = np.flatnonzero((preds["split"] == "test").to_numpy())
    wrong = cnn_predictions(run)[test] != preds["y"].to_numpy()[test]
    return {int(r): bool(w) for r, w in zip(np.concatenate([test[wrong], test[~wrong]]),
                                           np.concatenate([wrong[wrong], wrong[~wrong]]), strict=True)}
