pytest_plugins = ["compass.testing.fixtures"]
