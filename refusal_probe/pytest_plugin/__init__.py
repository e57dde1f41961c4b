"""The pytest plugin that turns refusal audits into tests (see :mod:`.plugin`)."""
