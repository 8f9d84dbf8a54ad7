"""Shared fixtures: an isolated cache, a tiny folder dataset and a few tiny trained runs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

# Every test reads and writes a throw-away cache, never ~/.cache/lunglens; tests that need their own set LUNGLENS_HOME.
# One cache per test session, even if this file is imported a second time (as ``tests.conftest``).
os.environ.setdefault("LUNGLENS_TEST_SESSION_HOME", tempfile.mkdtemp(prefix="lunglens-tests-"))
os.environ["LUNGLENS_HOME"] = os.environ["LUNGLENS_TEST_SESSION_HOME"]
os.environ.setdefault("LUNGLENS_DEVICE", "cpu")
# Pages wait this long for a background computation before drawing its progress panel: in tests, always long enough
# to draw the result (a test of the panel itself sets it to 0).
os.environ.setdefault("LUNGLENS_JOB_WAIT", "600")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_tiny_folder(root: Path, per_class: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Three classes whose bright blob sits in a class-specific place, with lesion and lung masks."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("covid", "normal", "pneumonia")):
        for sub in ("images", "masks", "lung_masks"):
            (root / sub / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(20, 90, (size, size)).astype(np.uint8)
            lung = np.zeros((size, size), np.uint8)
            lung[8:56, 6:58] = 255
            lesion = np.zeros_like(lung)
            if name != "normal":
                y0 = 12 + 20 * c + int(rng.integers(-3, 4))
                lesion[y0 : y0 + 12, 16:40] = 255
                img[lesion > 0] = 200
            cv2.imwrite(str(root / "images" / name / f"{name}_{i:02d}.png"), img)
            cv2.imwrite(str(root / "masks" / name / f"{name}_{i:02d}.png"), lesion)
            cv2.imwrite(str(root / "lung_masks" / name / f"{name}_{i:02d}.png"), lung)
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A 36-image folder dataset in the documented layout."""
    return write_tiny_folder(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


#: The experiment the page tests show: built-in phantoms at a tiny size, two depths, two epochs.
TINY_RUN = dict(data="builtin", builtin_per_class=20, init="scratch", image_size=64, head_width=16, epochs=2,
                patience=0, batch_size=16, lr=1e-3)
TINY_DEPTHS = (0, 5)


def trained(run: dict, depths: tuple[int, ...]):
    """A Selection of the config ``run`` at ``depths`` whose runs (every fold) are trained in the session's cache."""
    import engine
    from dashboard.state import Selection

    sel = Selection(engine.RunConfig(**run), depths)
    engine.run_sweep(sel.configs())
    return sel


@pytest.fixture(scope="session")
def trained_selection():
    """A Selection whose runs (depths 0 and 5 on tiny built-in data) are trained in the session's cache."""
    return trained(TINY_RUN, TINY_DEPTHS)


TINY_CT_RUN = dict(data="builtin-ct", builtin_per_class=10, backbone="resnet3d18", init="scratch", image_size=64,
                   epochs=1, patience=0, batch_size=8, lr=1e-3)
TINY_CT_DEPTHS = (0, 2)


@pytest.fixture(scope="session")
def trained_ct():
    """A Selection of tiny 3-D runs (depths 0 and 2 of a 3-D ResNet-18 on the built-in CT phantoms), trained once."""
    return trained(TINY_CT_RUN, TINY_CT_DEPTHS)


@pytest.fixture(scope="session")
def ouyang_variants(trained_ct):
    """The tiny 3-D experiment at depth 2 in Ouyang's four variants (plain, attention + US / SS / DS), trained once."""
    import engine
    from engine.ouyang import variant_configs

    base = engine.RunConfig(**TINY_CT_RUN).replace(depth=2)
    engine.run_sweep(list(variant_configs(base).values()))
    return base


@pytest.fixture()
def app(trained_selection):
    """An AppTest of the dashboard with the trained selection in its session state."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"), default_timeout=120)
    at.session_state["selection"] = trained_selection
    return at
