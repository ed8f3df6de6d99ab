"""What every sample-writing stage shares: chunks and speech spans (`spans`), a tokenized batch read
for sample building (`utterances`), samples rendered as JSON (`render`), documents assembled from
the consecutive utterances of a recording (`recordings`), and sample rows published as shards
(`publish`). The stages (interleave, pairs, synthesize) stay the thin steps they name."""
