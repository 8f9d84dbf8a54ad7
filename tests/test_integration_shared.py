"""The sweep on the real COVID-QU-Ex chest X-ray subset in ../shared/data (skipped when it is absent)."""
import math

import pytest

import engine


@pytest.mark.slow
def test_sweep_on_covidqu_trains_and_reports_every_metric(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    base = engine.RunConfig(data=str(shared_data / "covidqu_cxr_infection"), init="scratch", image_size=64,
                            head_width=32, epochs=2, patience=0, lr=1e-3)
    rows = engine.run_sweep(engine.sweep_configs(base, [0, 5]))
    ds = engine.load_dataset(base.data)
    assert ds.classes == ("covid", "non_covid", "normal") and ds.has_masks and ds.has_lung_masks
    for row in rows:
        run = row.run
        preds = run.predictions
        test = preds[preds.split == "test"]
        assert len(test) > 200
        # sim_group keeps near-duplicates on one side of every split
        sides = preds.groupby("group")["split"].nunique()
        assert (sides == 1).all()
        summary = row.as_dict()
        for key in ("acc", "sensitivity", "specificity", "ppv", "npv", "auc"):
            assert key in summary
        assert all(math.isfinite(summary[k]) for k in ("acc", "sensitivity", "specificity", "npv", "auc"))
        assert run.classes[run.positive] == "covid"
        assert {"train_acc", "test_acc", "train_sensitivity", "test_specificity", "test_ppv", "test_npv"} <= set(run.history)
