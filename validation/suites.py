"""Expectation suites (GX Core 1.x). Data suites run on the raw Parquet tables; embedding and drift
suites run on the tables that ``validation.checks`` computes (one row per vector, one summary row)."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from embeddings.data import contract
from validation import thresholds as t

EVENT_COLUMNS = [c.name for c in contract.EVENT_COLUMNS]
LISTING_COLUMNS = [c.name for c in contract.LISTING_COLUMNS]


def _contract_rules(columns, rules) -> list:
    """The contract's column and row rules, checked on the flags ``validation.checks`` computes from them."""
    e = [
        gxe.ExpectColumnValuesToBeInSet(column=f"valid_{c.name}", value_set=[True], meta={"check": "contract"})
        for c in columns
    ]
    return e + [
        gxe.ExpectColumnValuesToBeInSet(column=r.name, value_set=[True], meta={"check": r.problem}) for r in rules
    ]


def events_suite(listing_ids: list[str], previous_rows: int | None) -> gx.ExpectationSuite:
    e = [gxe.ExpectColumnToExist(column=c) for c in EVENT_COLUMNS]
    e += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in EVENT_COLUMNS]
    e += _contract_rules(contract.EVENT_COLUMNS, contract.EVENT_RULES)
    e += [
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=["view", "favorite", "contact"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=EVENT_COLUMNS),
        gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=listing_ids, meta={"check": "referential"}),
        gxe.ExpectColumnValuesToBeBetween(
            column="event_age_days", min_value=0, max_value=t.MAX_EVENT_AGE_DAYS, meta={"check": "freshness"}
        ),
    ]
    if previous_rows:
        lo, hi = t.ROW_COUNT_RATIO
        e.append(
            gxe.ExpectTableRowCountToBeBetween(
                min_value=int(lo * previous_rows),
                max_value=int(hi * previous_rows),
                meta={"check": "row count against the previous run"},
            )
        )
    return gx.ExpectationSuite(name="events", expectations=e)


def listings_suite() -> gx.ExpectationSuite:
    e = [gxe.ExpectColumnToExist(column=c) for c in LISTING_COLUMNS]
    e += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in LISTING_COLUMNS]
    e += _contract_rules(contract.LISTING_COLUMNS, contract.LISTING_RULES)
    e += [
        gxe.ExpectColumnValuesToBeInSet(column="deal_type", value_set=["rent", "sale"]),
        gxe.ExpectColumnValuesToBeInSet(column="property_type", value_set=["flat", "room", "house", "townhouse"]),
        gxe.ExpectColumnValuesToBeBetween(column="rooms", min_value=0, max_value=t.ROOMS_MAX),
        gxe.ExpectColumnValuesToBeBetween(column="area_m2", min_value=t.AREA_RANGE[0], max_value=t.AREA_RANGE[1]),
        gxe.ExpectColumnValuesToBeInSet(
            column="price_in_range", value_set=[True], meta={"check": "price per deal type"}
        ),
        gxe.ExpectColumnValuesToBeInSet(column="inside_city_box", value_set=[True], meta={"check": "coordinates"}),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["item_id", "event_timestamp"]),
    ]
    return gx.ExpectationSuite(name="listings", expectations=e)


def vectors_suite(name: str, dim: int) -> gx.ExpectationSuite:
    """One row per vector: its key, dimension, finiteness and norm."""
    return gx.ExpectationSuite(
        name=name,
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(column="key"),
            gxe.ExpectColumnValuesToBeUnique(column="key"),
            gxe.ExpectColumnValuesToBeInSet(column="dim", value_set=[dim]),
            gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="norm", min_value=t.NORM_RANGE[0], max_value=t.NORM_RANGE[1]),
        ],
    )


def collapse_suite(name: str, check_coverage: bool) -> gx.ExpectationSuite:
    """The one-row summary of a vector set."""
    e = [
        gxe.ExpectColumnValuesToBeBetween(column="near_duplicate_share", max_value=t.MAX_NEAR_DUPLICATE_SHARE),
        gxe.ExpectColumnValuesToBeBetween(column="mean_pairwise_cosine", max_value=t.MAX_MEAN_PAIRWISE_COSINE),
        gxe.ExpectColumnValuesToBeBetween(column="distinct_share", min_value=t.MIN_DISTINCT_SHARE),
    ]
    if check_coverage:
        e.append(gxe.ExpectColumnValuesToBeBetween(column="coverage", min_value=t.MIN_USER_COVERAGE))
    return gx.ExpectationSuite(name=name, expectations=e)


def scores_suite() -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name="scores",
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
            gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="p_rent"),
            gxe.ExpectColumnValuesToBeBetween(column="p_rent", min_value=0.0, max_value=1.0),
            gxe.ExpectColumnValuesToBeInSet(column="predicted_deal_type", value_set=["rent", "sale"]),
        ],
    )


def drift_suite(same_space: bool, columns: list[str] | None = None, name: str = "drift") -> gx.ExpectationSuite:
    """The one-row drift table against the last published run; failures here can be overridden.
    ``columns``: those the table has (a profile table has no score columns)."""
    e = [
        gxe.ExpectColumnValuesToBeBetween(column="psi_p_rent", max_value=t.PSI_FAIL),
        gxe.ExpectColumnValuesToBeBetween(column="rent_share_delta", max_value=t.MAX_RENT_SHARE_DELTA),
        gxe.ExpectColumnValuesToBeBetween(column="flipped_share", max_value=t.MAX_FLIPPED_SHARE),
    ]
    if same_space:
        e += [
            gxe.ExpectColumnValuesToBeBetween(column="domain_classifier_auc", max_value=t.MAX_DOMAIN_AUC),
            gxe.ExpectColumnValuesToBeBetween(
                column="drifted_component_share", max_value=t.MAX_DRIFTED_COMPONENT_SHARE
            ),
            gxe.ExpectColumnValuesToBeBetween(column="mean_shift", max_value=t.MAX_MEAN_SHIFT),
            gxe.ExpectColumnValuesToBeBetween(column="shared_user_median_cosine", min_value=t.MIN_SHARED_USER_COSINE),
        ]
    if columns is not None:
        e = [x for x in e if x.column in columns]
    return gx.ExpectationSuite(name=name, expectations=e)


def compatibility_suite(columns: list[str]) -> gx.ExpectationSuite:
    """A new model's release against its consumers (``validation.checks.compatibility_table``): overridable only
    by declaring a new space."""
    e = [
        gxe.ExpectColumnValuesToBeInSet(column="space_kept", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="consumer_measured", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="consumer_auc_ratio", min_value=t.MIN_CONSUMER_AUC_RATIO),
        gxe.ExpectColumnValuesToBeBetween(column="retrieval_recall_ratio", min_value=t.MIN_RETRIEVAL_RECALL_RATIO),
    ]
    return gx.ExpectationSuite(name="compatibility", expectations=[x for x in e if x.column in columns])


def drift_warning_suite() -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name="drift_warnings",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(column="psi_p_rent", max_value=t.PSI_WARN),
        ],
    )


def run_suite(columns: list[str], name: str = "run") -> gx.ExpectationSuite:
    """The one-row consistency table of a run (``validation.checks.run_table``); never overridable."""
    every = {
        "model_versions": gxe.ExpectColumnValuesToBeBetween(column="model_versions", min_value=1, max_value=1),
        "model_version_is_the_records": gxe.ExpectColumnValuesToBeInSet(
            column="model_version_is_the_records", value_set=[True]
        ),
        "listing_model_versions_match": gxe.ExpectColumnValuesToBeInSet(
            column="listing_model_versions_match", value_set=[True]
        ),
        "classifier_versions": gxe.ExpectColumnValuesToBeBetween(
            column="classifier_versions", min_value=1, max_value=1
        ),
        "users_with_a_score": gxe.ExpectColumnValuesToBeBetween(column="users_with_a_score", min_value=1.0),
        "scores_with_a_user": gxe.ExpectColumnValuesToBeBetween(column="scores_with_a_user", min_value=1.0),
        "norm_ratio_to_training": gxe.ExpectColumnValuesToBeBetween(
            column="norm_ratio_to_training", min_value=t.NORM_RATIO_RANGE[0], max_value=t.NORM_RATIO_RANGE[1]
        ),
        "spread_ratio_to_training": gxe.ExpectColumnValuesToBeBetween(
            column="spread_ratio_to_training", min_value=t.NORM_RATIO_RANGE[0], max_value=t.NORM_RATIO_RANGE[1]
        ),
        "history_alignment": gxe.ExpectColumnValuesToBeBetween(
            column="history_alignment", min_value=t.MIN_HISTORY_ALIGNMENT
        ),
    }
    return gx.ExpectationSuite(name=name, expectations=[every[c] for c in columns if c in every])
