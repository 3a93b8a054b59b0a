"""Root conftest: the pytester fixture for the plugin's own tests, and nothing clever."""

pytest_plugins = ["pytester"]
