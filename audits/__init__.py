"""The audit suite (a package, so its test files may share names with those in tests/)."""
