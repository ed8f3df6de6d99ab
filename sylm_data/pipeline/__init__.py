"""Config, stage registry, the Ray Data runner, resume markers, run records and the shard writer."""
