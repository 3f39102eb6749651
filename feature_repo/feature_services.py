from feast import FeatureService
from feature_views import (
    listing_embedding,
    listing_lst_features,
    user_embedding,
    user_embedding_native,
    user_embedding_next_space,
    user_profile_embedding,
    user_profile_embedding_native,
    user_profile_embedding_next_space,
    user_rent_sale_preference,
)

user_profile = FeatureService(
    name="user_profile",
    features=[user_embedding, user_profile_embedding, user_rent_sale_preference],
    description="What a consumer usually needs about a user: intent and profile embeddings, rent/sale preference.",
    owner="recsys-embeddings@lst.example",
    tags={"team": "recsys"},
)

listing_profile = FeatureService(
    name="listing_profile",
    features=[listing_lst_features, listing_embedding],
    description="A listing's lst features and its embedding.",
    owner="recsys-embeddings@lst.example",
    tags={"team": "recsys"},
)

user_native = FeatureService(
    name="user_native",
    features=[user_embedding_native, user_profile_embedding_native],
    description="The current model's own user vectors (its model_version is their space): refit at every release.",
    owner="recsys-embeddings@lst.example",
    tags={"team": "recsys"},
)

user_next_space = FeatureService(
    name="user_next_space",
    features=[user_embedding_next_space, user_profile_embedding_next_space],
    description="During a transition to a declared new space: the user vectors in it (null otherwise).",
    owner="recsys-embeddings@lst.example",
    tags={"team": "recsys"},
)
