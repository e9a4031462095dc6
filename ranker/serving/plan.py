"""The request plan: everything about a feature service that does not change between requests.

Built once per :class:`~ranker.serving.features.OnlineFeatures` from the Feast registry: which
fields of which entity hashes (Redis) or tables (sqlite) the service needs, grouped by entity key
(:class:`Group`: one hash per entity), in which round each group is read, where each field lands
in the model's matrix, and the on-demand views with the groups they read.

Views are handled generically by their join keys: any view keyed by a subset of the request's keys
(``user_id``, ``item_id``, ``query``) and the listing's keys (``seller_id``, ``category``, read from
``listing_fv``) is served; a view keyed only by the listing's own keys is item-level (cacheable); a
view needing ``seller_id``/``category`` is read in the second round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ranker.features import feast_compat
from ranker.features.reference import LISTING_KEYS, LISTING_VIEW, SOLD_FIELD
from ranker.features.store import FeatureRepoError
from ranker.serving import on_demand

# Join keys the request gives directly; those read from the listing are LISTING_KEYS.
REQUEST_KEYS = ("user_id", "item_id", "query")
ITEM_KEYS = ("item_id", *LISTING_KEYS)  # keys that vary with the listing: the item-level views
SUPPORTED_REQUEST_FIELDS = ("request_ts", "query_text")
NUMERIC_TYPES = ("Float32", "Float64", "Int64", "Int32", "Bool")

Field = tuple[str, str, str]  # (view, feature, Feast dtype name)


@dataclass
class FieldSet:
    """Fields read together from one entity's hash (Redis) or from its rows (sqlite).

    Redis reads a hash with ``HMGET`` of exactly these fields, or with ``HGETALL`` when they are at
    least half of the hash (and more than a handful): Redis then walks the hash once instead of
    searching it per field and parses one argument instead of one per field, which measured 40%
    less server CPU for the listing hash (19 of its 31 fields; benchmarks in the README). The reply
    is parsed by name (:func:`ranker.serving.resp.parse_replies`), other views' fields skipped."""

    n: int
    n_num: int  # the first n_num fields are numeric, the rest strings
    redis_names: list  # Feast's field names in the hash (murmur3 of "view:feature"), in field order
    hgetall: bool
    head: bytes  # RESP of the command up to the key
    tail: bytes  # RESP after the key (HMGET's field names)
    sqlite_views: list  # (table, {feature_name: position})
    _sql: dict
    table: int = -1  # HGETALL: its name table in the plan's tables (parse_replies); -1: HMGET
    presence: bool = False  # its reads report which cells exist (the listing's: known / unknown)

    @classmethod
    def build(cls, fields: list, redis_names: list, tables: dict, hash_fields: int) -> FieldSet:
        """The field set of ``fields`` (numeric first), their Redis names, their views' sqlite
        tables, and how many fields the entity's whole hash holds (HMGET or HGETALL)."""
        by_view: dict = {}
        for j, (view, name, _dtype) in enumerate(fields):
            by_view.setdefault(view, {})[name] = j
        n_num = sum(dtype in NUMERIC_TYPES for _v, _n, dtype in fields)
        if any(dtype not in NUMERIC_TYPES for _v, _n, dtype in fields[:n_num]):
            raise FeatureRepoError("a field set lists its numeric fields first")
        hgetall = len(fields) > 4 and 2 * len(fields) >= hash_fields
        if hgetall:
            head, tail = b"*2\r\n$7\r\nHGETALL\r\n", b""
        else:
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
            tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in redis_names)
        return cls(
            n=len(fields),
            n_num=n_num,
            redis_names=list(redis_names),
            hgetall=hgetall,
            head=head,
            tail=tail,
            sqlite_views=[(tables[v], names) for v, names in by_view.items()],
            _sql={},
        )

    def sqlite_queries(self, n_keys: int) -> list[str]:
        """One query per view: rows (position in the flat key x field grid, value)."""
        sql = self._sql.get(n_keys)
        if sql is None:
            values = ",".join(f"({i},?)" for i in range(n_keys))
            sql = []
            for table, names in self.sqlite_views:
                case = " ".join(f"WHEN {_sql_str(name)} THEN {j}" for name, j in names.items())
                listed = ",".join(_sql_str(name) for name in names)
                sql.append(
                    f"WITH k(i, ek) AS (VALUES {values}) "
                    f"SELECT k.i * {self.n} + CASE t.feature_name {case} END, t.value "
                    f'FROM k JOIN "{table}" t ON t.entity_key = k.ek WHERE +t.feature_name IN ({listed})'
                )
            if len(self._sql) < 256:
                self._sql[n_keys] = sql
        return sql


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass
class Group:
    """Views sharing one entity key (so one Redis hash per entity)."""

    join_keys: tuple[str, ...]  # sorted
    varying: tuple[str, ...]  # keys that vary with the listing (item_id, seller_id, category)
    cacheable: bool  # item-level: only keys that vary with the listing
    derived: bool  # needs seller_id/category from listing_fv: second round
    fields: list  # (view, name, dtype): numeric fields first, then strings
    n_num: int
    fieldset: FieldSet
    # where its numbers / strings sit in a cached item record
    cache_num: slice = field(default_factory=lambda: slice(0, 0))
    cache_str: slice = field(default_factory=lambda: slice(0, 0))


@dataclass
class OnDemandView:
    """An on-demand view of the service: the function Feast stored, the matrix columns of its
    outputs, and the groups whose values it reads (it runs as soon as they are in)."""

    name: str
    function: Callable
    takes_mapping: bool  # the function gives the same result on a dict of columns (no DataFrame needed)
    outputs: list  # (matrix column, output name)
    inputs: list  # (view, feature) it reads from feature views
    groups: frozenset = frozenset()


def _view_keys(view: Any) -> tuple[str, ...]:
    return tuple(sorted(c.name for c in view.entity_columns))


class Plan:
    """Everything about the service that does not change between requests (see the module doc)."""

    def __init__(self, store: Any, spec: Any) -> None:
        self.project: str = store.project
        self._views = {v.name: v for v in store.list_feature_views()}
        self._versioning = feast_compat.online_versioning(store)
        self._needed: dict[str, list[str]] = {}
        for name in (*LISTING_KEYS, SOLD_FIELD):
            self._need(LISTING_VIEW, name)
        self._collect_service(spec, {v.name: v for v in store.list_on_demand_feature_views()})
        self._tables = {
            v: feast_compat.sqlite_table(self.project, self._views[v], versioning=self._versioning)
            for v in self._needed
        }
        self._build_groups()
        self._locate_fields()
        self._locate_listing()
        self._build_name_tables()
        self._locate_columns(spec)
        self.defaults = np.array([spec.defaults[f] for f in spec.features], dtype=np.float64)
        self.has_default = ~np.isnan(self.defaults)
        self.n_features = len(spec.features)

    # -- which fields the service needs ------------------------------------------------------------
    def _need(self, view: str, name: str) -> None:
        if view not in self._views:
            raise FeatureRepoError(f"feature view {view!r} is not registered")
        names = self._needed.setdefault(view, [])
        if name not in names:
            names.append(name)

    def _collect_service(self, spec: Any, odfvs: dict) -> None:
        """The service's feature-view fields, and its on-demand views with the fields they read."""
        self.odfvs: list[OnDemandView] = []
        self.request_fields: set[str] = set()
        by_name: dict[str, OnDemandView] = {}
        for j, ref in enumerate(spec.refs):
            view, name = ref.split(":", 1)
            if view in self._views:
                self._need(view, name)
            elif view in odfvs:
                entry = by_name.get(view)
                if entry is None:
                    entry = by_name[view] = self._on_demand_view(odfvs[view])
                    self.odfvs.append(entry)
                entry.outputs.append((j, name))
            else:
                raise FeatureRepoError(f"{ref}: unknown view in service {spec.name!r}")
        unsupported = self.request_fields - set(SUPPORTED_REQUEST_FIELDS)
        if unsupported:
            raise FeatureRepoError(f"request fields {sorted(unsupported)} are not supported by the serving path")

    def _on_demand_view(self, odfv: Any) -> OnDemandView:
        inputs = []
        kinds: dict[str, str] = {}
        for proj in odfv.source_feature_view_projections.values():
            dtypes = {f.name: str(f.dtype) for f in self._views[proj.name].features} if proj.name in self._views else {}
            for feat in proj.features:
                self._need(proj.name, feat.name)
                inputs.append((proj.name, feat.name))
                kinds[feat.name] = "num" if dtypes.get(feat.name) in NUMERIC_TYPES else "str"
        for src in odfv.source_request_sources.values():
            names = [f.name for f in src.schema]
            self.request_fields.update(names)
            kinds.update({n: "num" if n == "request_ts" else "str" for n in names})
        function = on_demand.stored_function(odfv)
        return OnDemandView(odfv.name, function, on_demand.takes_mapping(function, kinds), [], inputs)

    # -- groups: one per entity key --------------------------------------------------------------
    def _build_groups(self) -> None:
        by_keys: dict[tuple, list[Field]] = {}
        for view, names in self._needed.items():
            keys = _view_keys(self._views[view])
            bad = [k for k in keys if k not in REQUEST_KEYS + LISTING_KEYS]
            if not keys or bad:
                raise FeatureRepoError(f"{view}: join keys {list(keys)} are not supported by the serving path")
            dtypes = {f.name: str(f.dtype) for f in self._views[view].features}
            for name in names:
                if name not in dtypes:
                    raise FeatureRepoError(f"{view}:{name} is not a feature of {view}")
                by_keys.setdefault(keys, []).append((view, name, dtypes[name]))
        self.groups: list[Group] = []
        num_off = str_off = 0
        for keys, fields in by_keys.items():
            group = self._group(keys, fields)
            if group.cacheable:
                group.cache_num = slice(num_off, num_off + group.n_num)
                group.cache_str = slice(str_off, str_off + len(group.fields) - group.n_num)
                num_off, str_off = group.cache_num.stop, group.cache_str.stop
            self.groups.append(group)
        self.cache_width = (num_off, str_off)
        self.round1_groups = [g for g, group in enumerate(self.groups) if not group.derived]

    def _group(self, keys: tuple[str, ...], fields: list[Field]) -> Group:
        fields = [f for f in fields if f[2] in NUMERIC_TYPES] + [f for f in fields if f[2] not in NUMERIC_TYPES]
        n_num = sum(f[2] in NUMERIC_TYPES for f in fields)
        redis_names = [self._redis_field(v, n) for v, n, _ in fields]
        # Fields of the entity's hash: every view on the same keys writes its features and a _ts.
        hash_fields = sum(len(v.features) + 1 for v in self._views.values() if _view_keys(v) == keys)
        return Group(
            join_keys=keys,
            varying=tuple(k for k in keys if k in ITEM_KEYS),
            cacheable=all(k in ITEM_KEYS for k in keys),
            derived=any(k in LISTING_KEYS for k in keys),
            fields=fields,
            n_num=n_num,
            fieldset=FieldSet.build(fields, redis_names, self._tables, hash_fields),
        )

    def _redis_field(self, view: str, name: str) -> bytes:
        return feast_compat.redis_field(self._views[view], name, versioning=self._versioning)

    # -- where each field lands ------------------------------------------------------------------
    def _locate_fields(self) -> None:
        """Where each needed field lands: (group index, "num"/"str", column in that group's block)."""
        self.loc: dict = {}
        for g, group in enumerate(self.groups):
            for k, (view, name, _dtype) in enumerate(group.fields):
                self.loc[(view, name)] = (g, "num", k) if k < group.n_num else (g, "str", k - group.n_num)

    def _locate_listing(self) -> None:
        """The listing's group, its sold flag and keys, and the one-field set of the sold flag."""
        found = next((g for g, grp in enumerate(self.groups) if grp.join_keys == ("item_id",)), None)
        if found is None or (LISTING_VIEW, SOLD_FIELD) not in self.loc:
            raise FeatureRepoError(f"{LISTING_VIEW} must be keyed by item_id alone")
        self.item_group: int = found
        self.listing_table: str = self._tables[LISTING_VIEW]  # sqlite: the table a readiness probe reads
        self.sold_loc: int = self.loc[(LISTING_VIEW, SOLD_FIELD)][2]
        self.key_loc = {k: self.loc[(LISTING_VIEW, k)][2] for k in LISTING_KEYS}
        listing = self.groups[self.item_group]
        sold_fields = [f for f in listing.fields if f[0] == LISTING_VIEW and f[1] == SOLD_FIELD]
        self.sold_fieldset = FieldSet.build(
            sold_fields,
            [self._redis_field(LISTING_VIEW, SOLD_FIELD)],
            self._tables,
            hash_fields=1 << 30,  # one field: always HMGET
        )
        listing.fieldset.presence = self.sold_fieldset.presence = True

    def _build_name_tables(self) -> None:
        """Name tables of the HGETALL field sets, one row each, for the reply parser."""
        from ranker.serving.resp import name_table

        mapped = [fs for fs in (*(grp.fieldset for grp in self.groups), self.sold_fieldset) if fs.hgetall]
        width = max((name_table(fs.redis_names)[0].shape[1] for fs in mapped), default=8)
        self.map_names = np.zeros((max(len(mapped), 1), width), dtype=np.uint32)
        self.map_columns = np.full((max(len(mapped), 1), width), -1, dtype=np.int64)
        for t, fs in enumerate(mapped):
            fs.table = t
            names, columns = name_table(fs.redis_names, size=width)
            self.map_names[t], self.map_columns[t] = names[0], columns[0]

    def _locate_columns(self, spec: Any) -> None:
        """Matrix columns filled straight from a group's numbers, per group; string-typed service
        features are coerced like feature_matrix does; the on-demand views' inputs and groups."""
        self.string_columns: list = []  # (matrix column, group, string column)
        per_group: dict = {}
        for j, ref in enumerate(spec.refs):
            view, name = ref.split(":", 1)
            if view in self._views:
                g, kind, k = self.loc[(view, name)]
                if kind == "num":
                    per_group.setdefault(g, ([], []))
                    per_group[g][0].append(j)
                    per_group[g][1].append(k)
                else:
                    self.string_columns.append((j, g, k))
        self.columns: list = [(g, np.array(js), np.array(ks)) for g, (js, ks) in per_group.items()]
        inputs = dict.fromkeys(src for view in self.odfvs for src in view.inputs)
        self.odfv_inputs = [(name, self.loc[(view, name)]) for view, name in inputs]
        for odfv in self.odfvs:
            odfv.groups = frozenset(self.loc[src][0] for src in odfv.inputs)
