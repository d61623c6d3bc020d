"""A tiny-model variant only the cache tests use, so no other test has compiled its graphs."""
CACHE_TEST_MODEL = {"model_channels": 64, "num_heads": 2}
