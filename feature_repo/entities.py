"""Entities: the keys features are fetched by, offline (point-in-time joins) and online."""

from feast import Entity, ValueType

# A buyer browsing the marketplace.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A buyer.")

# A listing: one unique second-hand item that sells at most once.
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A listing.")

# The person selling listings.
seller = Entity(name="seller", join_keys=["seller_id"], value_type=ValueType.STRING, description="A seller.")

# A listing category (dresses, sneakers, ...); combined with user or query for affinities.
category = Entity(
    name="category", join_keys=["category"], value_type=ValueType.STRING, description="A listing category."
)

# A normalised search query (lower-case, single spaces).
query = Entity(name="query", join_keys=["query"], value_type=ValueType.STRING, description="A search query.")

# A brand, lower case; combined with the user for brand taste (every listing is unique, its brand is not).
brand = Entity(name="brand", join_keys=["brand"], value_type=ValueType.STRING, description="A brand.")
