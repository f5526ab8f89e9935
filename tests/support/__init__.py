"""Helpers the tests share: tiny model families, fakes, tolerance checks. Imported as
`support.<module>` (tests/ is on sys.path: its conftest.py sits there without a package)."""
