from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A visitor of the classifieds site, identified by the click log's user_id.",
)

listing = Entity(
    name="listing",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A real-estate listing (an ad), identified by the listings table's item_id.",
)
