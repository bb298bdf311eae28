"""Real servers and projects the tests run against (no mocks of MLflow, Kedro or google-auth)."""
