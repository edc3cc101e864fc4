"""taskrouter.loadtest (folder `loadtest/`): the Locust scenario `taskrouter loadtest` runs."""
