"""Every number a check compares against, in one reviewable place."""

# listings: plausible price ranges per deal type (rent is monthly)
PRICE_RANGE = {"rent": (1_000.0, 3_000_000.0), "sale": (100_000.0, 5_000_000_000.0)}
ROOMS_MAX = 20
AREA_RANGE = (5.0, 2_000.0)

# bounding boxes (lat_min, lat_max, lon_min, lon_max) of the cities the site serves
CITY_BOXES = {
    "Moscow": (55.3, 56.2, 36.9, 38.3),
    "Saint Petersburg": (59.5, 60.3, 29.6, 30.9),
    "Kazan": (55.5, 56.1, 48.7, 49.5),
    "Yekaterinburg": (56.5, 57.2, 60.2, 61.0),
    "Novosibirsk": (54.7, 55.4, 82.5, 83.3),
    "Nizhny Novgorod": (56.0, 56.6, 43.6, 44.4),
    "Krasnodar": (44.8, 45.3, 38.6, 39.4),
    "Sochi": (43.3, 43.9, 39.3, 40.2),
}

# events: freshness and volume against the previous published run
MAX_EVENT_AGE_DAYS = 8  # events older than this before the newest one are not part of a weekly run
ROW_COUNT_RATIO = (0.5, 2.0)  # this run's events / previous run's events

# embeddings
NORM_RANGE = (0.1, 1_000.0)  # every vector's L2 norm
NEAR_DUPLICATE_COSINE = 0.999  # two vectors this close count as duplicates
MAX_NEAR_DUPLICATE_SHARE = 0.5  # share of distinct vectors with a near twin: above half is collapse
# (the demo week: 0.2 %; a tiny test week with a barely trained model: up to 30 %, users whose last clicks agree)
MIN_DISTINCT_SHARE = 0.5  # distinct vectors / vectors (identical click histories share one vector)
MAX_MEAN_PAIRWISE_COSINE = 0.9  # collapse: everything points the same way
MIN_USER_COVERAGE = 0.95  # users with a click before the cut-off that got an embedding
NORM_RATIO_RANGE = (0.5, 2.0)  # median norm and spread of a run's user vectors / the model's at training time
MIN_HISTORY_ALIGNMENT = 0.6  # users whose vector prefers their own last listing to another's (shuffled ids: 0.5)
MIN_USERS_FOR_ALIGNMENT_CHECK = 20

# drift against the last published run
PSI_WARN, PSI_FAIL = 0.1, 0.25  # p_rent distribution
MAX_RENT_SHARE_DELTA = 0.15  # predicted rent share, absolute change
MAX_FLIPPED_SHARE = 0.2  # users scored in both runs whose predicted deal type changed
MAX_DOMAIN_AUC = 0.55  # same model version: classifier telling old from new embeddings (Evidently's default)
MAX_DRIFTED_COMPONENT_SHARE = 0.5  # same model version: share of components whose KS test rejects
MAX_MEAN_SHIFT = 0.5  # same model version: |mean_new - mean_old| / mean norm
MIN_SHARED_USER_COSINE = 0.5  # same model version: median cosine of a user's old and new vector
KS_P_VALUE = 0.01  # a component drifted when its two-sample KS test rejects at this level
DRIFT_SAMPLE = 2000  # vectors sampled per run for pairwise and distribution checks
KNN_SAMPLE = 500  # users whose 10 nearest neighbours are compared across model versions
MIN_SHARED_USERS_FOR_ALIGNMENT = 20  # fewer shared users: no Procrustes / neighbour figures

# compatibility of a new model's release with consumers fitted on the previous release (same users, same clicks)
MIN_CONSUMER_AUC_RATIO = 0.95  # a consumer's ROC-AUC on the new release's pinned vectors / on the previous release's
MIN_RETRIEVAL_RECALL_RATIO = 0.9  # recall@10 among the previous release's listing vectors: new users / previous users
