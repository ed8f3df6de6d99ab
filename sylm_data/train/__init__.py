"""The slim DeepSpeed trainer that consumes the shards."""
