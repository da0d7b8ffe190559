"""The HTTP API: dependencies, problem documents, models and one router per resource."""
