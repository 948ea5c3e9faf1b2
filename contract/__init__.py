"""Contract tooling: Schemathesis config and checks, the live-server fuzz runner."""
