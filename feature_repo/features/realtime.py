"""Real-time features: fed by the event stream (`ranker stream run`), one declaration each like every
other feature. The stream writes them to the online store within a second of the event and appends
the rows it wrote to the offline directory; `ranker features build` writes the backfill of the same
rows from the event log (ranker/streaming/windows.py and backfill.py compute them, identically).

A row's values are the windows as of its event_timestamp T (counts over (T - W, T], on event time).
The stream writes a row at each entity's latest event, so the served value is the window as of the
entity's last event: it does not decay while no event comes. A Feast point-in-time join over the rows
written at each event's time returns exactly that value, so training sees what serving saw.
"""

from datetime import timedelta

from data_sources import item_realtime_push, user_session_push
from entities import item, user
from feast import FeatureView, Field
from feast.types import Float32, Int64, String

from ranker.streaming.windows import CTR_PRIOR, CTR_SMOOTHING, DEFAULT_LATENESS_S

_LATE = (
    f"Event time; records more than {DEFAULT_LATENESS_S:g} s behind the stream's newest are counted late, "
    "not applied."
)

item_realtime_fv = FeatureView(
    name="item_realtime_fv",
    entities=[item],
    ttl=timedelta(days=1),
    source=item_realtime_push,
    online=True,
    description="A listing's engagement in the last hour and day, and in its first 6 hours online, "
    "as of its latest event (stream-fed). " + _LATE,
    schema=[
        Field(name="item_impressions_1h", dtype=Int64, description="Times shown, last 1 hour.", tags={"default": "0"}),
        Field(name="item_clicks_1h", dtype=Int64, description="Clicks, last 1 hour.", tags={"default": "0"}),
        Field(name="item_saves_1h", dtype=Int64, description="Saves, last 1 hour.", tags={"default": "0"}),
        Field(
            name="item_impressions_24h", dtype=Int64, description="Times shown, last 24 hours.", tags={"default": "0"}
        ),
        Field(name="item_clicks_24h", dtype=Int64, description="Clicks, last 24 hours.", tags={"default": "0"}),
        Field(name="item_saves_24h", dtype=Int64, description="Saves, last 24 hours.", tags={"default": "0"}),
        Field(
            name="item_ctr_24h_rt",
            dtype=Float32,
            description=f"Click-through rate last 24 hours, smoothed: (clicks + {CTR_SMOOTHING:g} x {CTR_PRIOR:g}) / "
            f"(impressions + {CTR_SMOOTHING:g}).",
            tags={"default": f"{CTR_PRIOR:g}"},
        ),
        Field(
            name="item_first6h_impressions",
            dtype=Int64,
            description="Times shown in the listing's first 6 hours online (so far, if younger).",
        ),
        Field(name="item_first6h_clicks", dtype=Int64, description="Clicks in the listing's first 6 hours online."),
        Field(name="item_first6h_saves", dtype=Int64, description="Saves in the listing's first 6 hours online."),
    ],
)

user_session_fv = FeatureView(
    name="user_session_fv",
    entities=[user],
    ttl=timedelta(days=1),
    source=user_session_push,
    online=True,
    description="A buyer's current session: engagement in the last 30 minutes as of the buyer's latest "
    "event (stream-fed). " + _LATE,
    schema=[
        Field(name="user_clicks_30m", dtype=Int64, description="Clicks, last 30 minutes.", tags={"default": "0"}),
        Field(name="user_saves_30m", dtype=Int64, description="Saves, last 30 minutes.", tags={"default": "0"}),
        Field(
            name="user_session_categories",
            dtype=String,
            description="Categories of the listings clicked in the last 30 minutes, distinct, sorted, comma-joined.",
        ),
        Field(
            name="user_session_brands",
            dtype=String,
            description="Brands of the listings clicked in the last 30 minutes, distinct, sorted, comma-joined.",
        ),
    ],
)
