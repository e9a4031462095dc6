"""On-demand views: the scorer runs the very function Feast stored, for every view of every service,
so an edited function body changes serving exactly as it changes Feast (training and
get_online_features)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest


def _services(store) -> list[str]:
    return sorted(s.name for s in store.list_feature_services())


def test_the_scorer_runs_the_function_feast_stored_for_every_view(world):
    from ranker.features.store import feature_store, service_spec
    from ranker.serving import on_demand
    from ranker.serving.plan import Plan

    store = feature_store(world)
    stored = store.list_on_demand_feature_views()
    store.list_on_demand_feature_views = lambda *a, **k: stored  # the plan sees these very objects
    served = set()
    for service in _services(store):
        plan = Plan(store, service_spec(store, service))
        for view in plan.odfvs:
            odfv = next(v for v in stored if v.name == view.name)
            assert view.function is on_demand.stored_function(odfv), f"{service}: {view.name} runs another function"
            assert view.takes_mapping, (
                f"{view.name}: its stored function no longer gives the same values on a dict of columns, so the "
                "scorer builds a DataFrame per request; delegate to ranker.features.transforms (see on_demand.py)"
            )
            served.add(view.name)
    assert served == {v.name for v in stored}, "every on-demand view is served by some feature service"


def test_a_function_written_for_dataframes_only_gets_a_dataframe():
    import pandas as pd

    from ranker.features import transforms
    from ranker.serving.on_demand import takes_mapping

    def frames_only(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"x": inputs["price"].fillna(0.0).astype("float32")})

    def differs(inputs):
        scale = 2.0 if isinstance(inputs, dict) else 1.0
        return (
            {"x": np.asarray(inputs["price"], dtype=np.float64) * scale}
            if isinstance(inputs, dict)
            else pd.DataFrame({"x": inputs["price"].to_numpy(np.float64)})
        )

    assert not takes_mapping(frames_only, {"price": "num"})
    assert not takes_mapping(differs, {"price": "num"})
    assert takes_mapping(
        transforms.user_listing_features,
        {
            "price": "num",
            "size": "str",
            "user_median_click_price_30d": "num",
            "user_price_index_30d": "num",
            "user_size": "str",
            "category_median_price": "num",
        },
    )


EDITED = """
def listing_request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    # edited: minutes instead of hours, written for DataFrames only (Series methods)
    age = pd.to_numeric(inputs["request_ts"], errors="coerce").sub(
        pd.to_numeric(inputs["listing_created_epoch"], errors="coerce")).div(60.0)
    return pd.DataFrame({"listing_age_hours": age.astype("float32")})
"""


@pytest.mark.slow
def test_an_edited_function_body_changes_serving_as_it_changes_feast(world, tmp_path):
    """Edit a function body in feature_repo/on_demand.py, apply: the scorer serves the edited values,
    bit-identical to Feast's get_online_features, and they differ from the unedited ones."""
    from ranker.features.materialize import materialize
    from ranker.features.reference import feast_reference
    from ranker.features.store import apply, feature_store, service_spec
    from ranker.serving.features import OnlineFeatures

    home = tmp_path / "home"
    shutil.copytree(world.feature_repo, home / "feature_repo")
    shutil.copytree(world.features_dir, home / "data" / world.features_dir.name)
    path = home / "feature_repo" / "on_demand.py"
    source = path.read_text()
    start = source.index("def listing_request_features")
    end = source.index("\n\n\n", start)
    path.write_text(source[:start] + EDITED.strip() + source[end:])
    edited = world.with_(home=home)
    assert edited.features_dir.exists()
    apply(edited)
    materialize(edited, full=True)
    materialize(world, full=True)  # harmless if another test already did

    store = feature_store(edited)
    spec = service_spec(store, "recs_ranker_v1")
    column = spec.features.index("listing_age_hours")
    import pandas as pd

    items = [str(i) for i in pd.read_parquet(world.features_dir / "listings.parquet").item_id.unique()[:40]]
    request = dict(user_id="u1", item_ids=items, query=None, request_ts=1_790_000_000)
    with OnlineFeatures(edited, service="recs_ranker_v1") as online:
        view = next(v for v in online._plan.odfvs if v.name == "listing_request_features")
        assert not view.takes_mapping, "a function written for DataFrames gets the DataFrame"
        got = online.fetch(**request)
    want = feast_reference(store, spec, **request)
    np.testing.assert_array_equal(got.matrix, want.matrix)
    with OnlineFeatures(world, service="recs_ranker_v1") as online:
        before = online.fetch(**request)
    known = got.known & ~np.isnan(got.matrix[:, column])
    assert known.sum() > 5
    np.testing.assert_allclose(got.matrix[known, column], before.matrix[known, column] * 60, rtol=1e-5)


def test_user_size_features_by_hand():
    """Letter sizes in steps (XS=0 .. XL=4), numeric sizes as numbers, unsized listings empty; the
    DataFrame (training) and dict (serving) forms give the same float32 values."""
    from ranker.features import transforms

    nan = float("nan")
    inputs = {
        "size": ["M", "XL", "41", "one size", None, "S"],
        "user_size": ["S", "S", "S", None, "S", None],
        "user_clothing_size_30d": [1.5, 1.5, 1.5, 1.5, 1.5, nan],
        "user_clothing_engaged_30d": [4.0, 4.0, 4.0, 4.0, 4.0, nan],
        "user_shoe_size_30d": [39.0, 39.0, 39.0, 39.0, 39.0, nan],
        "user_shoe_engaged_30d": [2.0, 2.0, 2.0, 2.0, 2.0, nan],
    }
    want = {
        "size_gap_profile": [1.0, 3.0, nan, nan, nan, nan],
        "size_gap_engaged": [0.5, 2.5, 2.0, nan, nan, nan],
        "size_engaged_n": [4.0, 4.0, 2.0, 0.0, 0.0, 0.0],
    }
    # the scorer passes float64 arrays and lists of str/None
    as_dict = transforms.user_size_features(
        {
            k: np.array(v, dtype=np.float64) if k.startswith("user_") and k != "user_size" else v
            for k, v in inputs.items()
        }
    )
    as_frame = transforms.user_size_features(pd.DataFrame(inputs))
    for name, values in want.items():
        np.testing.assert_array_equal(as_dict[name], np.array(values, dtype=np.float32), err_msg=name)
        np.testing.assert_array_equal(as_frame[name].to_numpy(), np.array(values, dtype=np.float32), err_msg=name)
    assert transforms.size_scale("xxl") == (1, 5.0)
    assert transforms.size_scale("44")[0] == 2 and transforms.size_scale("99")[0] == 0
